"""Whole runs of welcome_emails through `airflow dags test`, as users run it, proven from the ESP's log."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from include.local.run_embedded import airflow_env, migrate_ledger
from include.tools.generate_contacts import generate_rows, write_file
from tests.support.invariants import assert_ledger_matches, assert_run_invariants, expected_contacts
from welcome_mailer.run_files import run_directory

pytestmark = pytest.mark.slow

# Outcomes that exercise every path quickly: many blocks (so max_attempts is reached), short holds.
ESP_FLAGS = {
    "delivered_rate": 0.6,
    "bounced_rate": 0.1,
    "blocked_rate": 0.3,
    "hold_rate": 0.2,
    "hold_min_seconds": 0.2,
    "hold_max_seconds": 1.0,
}
MAX_ATTEMPTS = 3


@dataclass
class RunResult:
    state: str
    output: str
    report: dict | None


def run_welcome(
    home: Path, workspace: Path, esp, ledger_connection: dict, csv_path: str, extra_env: dict | None = None, **conf
) -> RunResult:
    """One `airflow dags test`; ``extra_env`` (connections, data roots, ...) goes over the defaults."""
    env = airflow_env(home)
    env.update(
        {
            "AIRFLOW_CONN_ESP_DEFAULT": json.dumps(esp.connection),
            "AIRFLOW_CONN_CONTACTS_DB": json.dumps(ledger_connection),
            "WELCOME_MAILER_DATA_ROOTS": str(workspace / "data"),
            "WELCOME_MAILER_REPORTS_DIR": str(workspace / "reports"),
            "WELCOME_MAILER_POKE_SECONDS": "0.5",
            **(extra_env or {}),
        }
    )
    migrate_ledger(env)  # as make run does
    run_conf = {"csv_path": csv_path, "max_attempts": MAX_ATTEMPTS, "resend_backoff_seconds": 0.2, **conf}
    airflow = str(Path(sys.executable).with_name("airflow"))
    completed = subprocess.run(
        [airflow, "dags", "test", "welcome_emails", "-c", json.dumps(run_conf)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = completed.stdout + completed.stderr
    finished = re.search(r"DagRun Finished: .*?run_id=([^,]+), .*?state=(\w+)", output)
    if finished is None:
        return RunResult("unknown", output, None)
    run_id, state = finished.groups()
    report_path = run_directory(workspace / "reports", run_id) / "report.json"  # local reports only
    return RunResult(state, output, json.loads(report_path.read_text()) if report_path.exists() else None)


def sqlite_ledger(workspace: Path) -> tuple[dict, str]:
    path = workspace / "ledger.db"
    return {"conn_type": "sqlite", "host": str(path)}, f"sqlite:///{path}"


def test_two_overlapping_files_on_sqlite(migrated_airflow_home, workspace, start_esp):
    esp = start_esp(**ESP_FLAGS)
    first = write_file(workspace / "data" / "first.csv", rows=1200, seed=1)
    first_lines = first.read_text().splitlines()
    second = workspace / "data" / "second.csv"
    second.write_text("\n".join(first_lines[::2] + list(generate_rows(600, seed=2))) + "\n")
    connection, url = sqlite_ledger(workspace)

    run1 = run_welcome(migrated_airflow_home, workspace, esp, connection, str(first), batch_size=100)
    assert run1.state == "success", run1.output[-3000:]
    after_first = esp.messages()
    first_contacts = expected_contacts(first)
    outcomes = assert_run_invariants(after_first, first_contacts, MAX_ATTEMPTS)
    assert outcomes.get("blocked", 0) > 0, "some contacts must have used up their attempts"
    assert_ledger_matches(url, after_first)
    report = run1.report
    assert report["unique_contacts"] == len(first_contacts) and report["claimed"] == len(first_contacts)
    assert report["rejected"] > 0 and report["duplicates_in_file"] > 0
    assert report["outcomes"]["failed"] == outcomes["blocked"]
    assert Path(report["rejected_csv"]).read_text().count("\n") == report["rejected"] + 1

    # The second file: only its new contacts; the failed ones are cooling off (retry_failed_after_hours).
    run2 = run_welcome(migrated_airflow_home, workspace, esp, connection, str(second), batch_size=100)
    assert run2.state == "success", run2.output[-3000:]
    new_messages = esp.messages()[len(after_first) :]
    failed_before = {e for e, h in _last_status(after_first).items() if h == "blocked"}
    second_contacts = expected_contacts(first, second)
    reachable = {e: n for e, n in second_contacts.items() if e in expected_contacts(second)}
    due = {e: n for e, n in reachable.items() if e not in first_contacts}
    assert_run_invariants(new_messages, due, MAX_ATTEMPTS)
    assert_ledger_matches(url, esp.messages())
    assert run2.report["already_contacted_skipped"] == len(reachable) - len(due)
    assert run2.report["failed_recently_skipped"] == len(failed_before & set(reachable))

    # The first file again: everybody was contacted, so nothing is sent, and the report says so.
    before_run3 = len(esp.messages())
    run3 = run_welcome(migrated_airflow_home, workspace, esp, connection, str(first))
    assert run3.state == "success", run3.output[-3000:]
    assert len(esp.messages()) == before_run3, "running a file twice sends nothing"
    assert run3.report["claimed"] == 0 and run3.report["messages_sent"] == 0
    report_md = (Path(run3.report["rejected_csv"]).parent / "report.md").read_text()
    assert "Nothing was sent" in report_md

    # Without the cool-off, exactly the failed contacts get a new email, under a fresh attempt budget.
    run4 = run_welcome(migrated_airflow_home, workspace, esp, connection, str(first), retry_failed_after_hours=0)
    assert run4.state == "success", run4.output[-3000:]
    retried = esp.messages()[before_run3:]
    assert {m["to"] for m in retried} == failed_before, "a later run retries exactly the contacts that failed"
    assert_run_invariants(retried, {e: first_contacts[e] for e in failed_before}, MAX_ATTEMPTS)
    assert_ledger_matches(url, esp.messages())


def _last_status(messages: list[dict]) -> dict[str, str]:
    return {m["to"]: m["status"] for m in messages}


@pytest.mark.parametrize(
    ("csv_path", "message"),
    [
        ("missing.csv", "does not exist"),
        (".", "not a regular file"),
        ("/etc/hostname", "outside the allowed data roots"),
    ],
)
def test_bad_csv_path_fails_at_once_and_sends_nothing(migrated_airflow_home, workspace, esp, csv_path, message):
    connection, _ = sqlite_ledger(workspace)
    result = run_welcome(migrated_airflow_home, workspace, esp, connection, csv_path)
    assert result.state == "failed"
    assert message in result.output
    assert esp.messages() == []


@pytest.mark.postgres
def test_overlapping_runs_at_once_on_postgres(migrated_airflow_home, workspace, start_esp, postgres_url, tmp_path):
    esp = start_esp(hold_rate=0.2, hold_min_seconds=0.2, hold_max_seconds=1.0)
    lines = list(generate_rows(1500, seed=3))
    files = []
    for n, part in enumerate((lines[:1000], lines[500:])):  # 500 contacts in both files
        path = workspace / "data" / f"part{n}.csv"
        path.write_text("\n".join(part) + "\n")
        files.append(path)
    homes = []
    for n in range(2):  # one Airflow metadata DB per concurrent `dags test`
        home = tmp_path / f"home{n}"
        shutil.copytree(migrated_airflow_home, home)
        homes.append(home)
    database = postgres_url.rsplit("/", 1)[1]
    connection = {"conn_type": "postgres", "host": "127.0.0.1", "port": 5432, "login": "postgres", "schema": database}

    with ThreadPoolExecutor(2) as pool:
        results = list(
            pool.map(
                lambda hf: run_welcome(hf[0], workspace, esp, connection, str(hf[1])), zip(homes, files, strict=True)
            )
        )
    assert [r.state for r in results] == ["success", "success"], results[0].output[-3000:] + results[1].output[-3000:]
    messages = esp.messages()
    assert_run_invariants(messages, expected_contacts(*files), max_attempts=MAX_ATTEMPTS)
    assert_ledger_matches(postgres_url, messages)
    claimed = sum(r.report["claimed"] for r in results)
    assert claimed == len(expected_contacts(*files)), "every contact claimed by exactly one of the runs"
