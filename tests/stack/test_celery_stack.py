"""welcome_emails on the real local stack: api-server, scheduler, dag-processor, triggerer, a Celery worker
(Redis broker, Postgres metadata and ledger) and the mock ESP, each a process. Runs are triggered through
the REST API v2 with a token, and proven from the ESP's message log and the ledger.

Each test uses its own email domain, so the shared ESP log can be read per test.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from include.tools.generate_contacts import generate_rows
from tests.stack.helpers import (
    assert_proven_from_outside,
    contact_file,
    esp_faults,
    run_and_wait,
    with_domain,
)

pytestmark = [pytest.mark.slow, pytest.mark.stack]


def test_a_run_triggered_through_the_rest_api(stack):
    path = contact_file(stack, "api", rows=2000, seed=21, domain="api")
    run_id, state = run_and_wait(stack, path)
    assert state == "success"
    assert_proven_from_outside(stack, "api", path)
    tasks = stack.api("GET", f"/api/v2/dags/welcome_emails/dagRuns/{run_id}/taskInstances").json()
    labels = {t["rendered_map_index"] for t in tasks["task_instances"] if t["task_id"] == "send_batch"}
    assert labels and all(label.startswith("batch ") for label in labels), labels


def test_four_overlapping_runs_at_once(stack):
    lines = list(generate_rows(3000, seed=22))
    paths = []
    for n in range(4):  # every file shares most of its contacts with the others
        part = lines[n * 250 : n * 250 + 2000]
        path = stack.data / f"overlap{n}.csv"
        path.write_text("\n".join(with_domain(line, "overlap") for line in part) + "\n")
        paths.append(path)
    with ThreadPoolExecutor(4) as pool:
        states = list(pool.map(lambda p: run_and_wait(stack, p)[1], paths))
    assert states == ["success"] * 4
    assert_proven_from_outside(stack, "overlap", *paths)


def test_esp_faults_do_not_break_the_guarantees(stack):
    path = contact_file(stack, "faults", rows=2000, seed=24, domain="faults")
    with esp_faults(stack, fail_rate=0.05, lose_response_rate=0.01, rate_limit_rps=30):
        _, state = run_and_wait(stack, path, batch_size=100)
    assert state == "success"
    assert_proven_from_outside(stack, "faults", path)


def test_bad_csv_path_through_the_api_fails_fast_and_sends_nothing(stack):
    before = stack.esp.get("/healthz").json()["messages"]
    started = time.monotonic()
    run_id, state = run_and_wait(stack, stack.data / "no-such-file.csv")
    assert state == "failed"
    assert time.monotonic() - started < 60, "no retries for a bad path"
    log = stack.api("GET", f"/api/v2/dags/welcome_emails/dagRuns/{run_id}/taskInstances/parse/logs/1").json()
    assert "does not exist" in json.dumps(log)
    assert stack.esp.get("/healthz").json()["messages"] == before


def test_the_form_and_the_api_refuse_bad_params(stack):
    response = stack.api(
        "POST",
        "/api/v2/dags/welcome_emails/dagRuns",
        json={"logical_date": None, "conf": {"csv_path": "input.csv", "batch_size": 5000}},
    )
    assert response.status_code == 400, response.text
    assert "batch_size" in response.text


def test_the_api_server_serves_the_packages_plugin_app(stack):
    import httpx

    answer = httpx.get(f"{stack.config.api_url}/welcome-mailer/health", timeout=10)
    assert answer.status_code == 200
    assert answer.json()["status"] == "ok"
