"""The bench's second baseline (include/bench/baseline_pipeline.py): the DAG's steps without Airflow. Its figure
only means "Airflow's share" if it does the DAG's whole job, so it is held to the run invariants, proven
from the mock ESP's own log and the ledger."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from include.bench import sql_time
from include.bench.baseline_pipeline import RUN_ID
from include.bench.run import BENCH_DIR, baseline
from tests.support import PROJECT_ROOT
from tests.support.esp import API_KEY
from tests.support.invariants import assert_ledger_matches, assert_run_invariants, expected_contacts


def run_baseline(csv_path, esp, ledger_url, conf: dict) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "include.bench.baseline_pipeline", str(csv_path), "--esp-url", esp.url]
    command += ["--api-key", API_KEY, "--ledger-url", ledger_url, "--conf", json.dumps(conf)]
    return subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)


def test_the_pipeline_without_airflow_emails_every_contact_once_and_records_it_all(esp, ledger_url, tmp_path):
    contacts = tmp_path / "contacts.csv"
    rows = [f"User {i}, user{i}@example.com, 555-0100, 1 Main St, Town, ST, 12345\n" for i in range(400)]
    contacts.write_text("".join(rows) + rows[7] + "Bad Row, not-an-address\n")
    # four send batches, as four mapped send tasks would be (the default keeps 400 contacts in one)
    conf = {"min_contacts_per_send_task": 100, "batch_size": 50}

    completed = run_baseline(contacts, esp, ledger_url, conf)

    assert completed.returncode == 0, completed.stderr[-2000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    messages = esp.messages()
    outcomes = assert_run_invariants(messages, expected_contacts(contacts), max_attempts=5)
    assert_ledger_matches(ledger_url, messages)
    assert sum(outcomes.values()) == result["contacts"] == 400
    assert result["summary"]["messages_sent"] == len(messages)
    assert result["summary"]["by_status"] == {
        "failed" if status == "blocked" else status: count for status, count in outcomes.items()
    }
    assert result["send_processes"] == (1 if ledger_url.startswith("sqlite") else 4)
    assert list(result["phase_seconds"]) == ["parse", "claim", "send", "awaiting outcomes", "resends", "close out"]
    # where its time in the ledger went (include/bench/sql_time.py): its costliest statements, all run
    assert result["sql_seconds"]["total"] > 0
    if ledger_url.startswith("sqlite"):  # one process at a time: its statements fit in the run's time
        assert result["sql_seconds"]["total"] < result["seconds"]
    statements = [statement for statement, _, _ in result["sql_seconds"]["statements"]]
    assert len(statements) == sql_time.SHOWN and sql_time.COMMIT in statements


def test_the_reputation_guard_checks_it_as_it_checks_the_dag(esp, ledger, ledger_url, tmp_path):
    """The DAG's send tasks and sensors check the reputation guard (a count of the run's outcomes): so does
    the pipeline without Airflow, or its figure would leave that cost to Airflow's share. A guard the mock's
    bounces trip at the first poll stops the run there: blocked contacts are released, none is resent."""
    contacts = tmp_path / "contacts.csv"
    contacts.write_text("".join(f"User {i}, user{i}@example.com\n" for i in range(400)))
    conf = {"min_contacts_per_send_task": 100, "batch_size": 50, "guard_min_outcomes": 20, "max_bounce_rate": 0.01}

    completed = run_baseline(contacts, esp, ledger_url, conf)

    assert completed.returncode == 0, completed.stderr[-2000:]
    messages = esp.messages()
    assert sorted(m["to"] for m in messages) == sorted(f"user{i}@example.com" for i in range(400))  # no resend
    assert ledger.guard_state(RUN_ID)[0], "the guard stopped the run"
    released = ledger.run_summary(f"{RUN_ID}#released")["by_status"]
    assert sum(released.values()) > 0  # the blocked contacts, for a later run


def test_a_conf_key_the_dag_does_not_have_is_refused(esp, tmp_path):
    contacts = tmp_path / "contacts.csv"
    contacts.write_text("User 1, user1@example.com\n")

    completed = run_baseline(contacts, esp, f"sqlite:///{tmp_path / 'ledger.db'}", {"max_send_task": 2})

    assert completed.returncode == 1
    assert "welcome_emails has no Param max_send_task" in completed.stderr
    assert esp.messages() == []


@pytest.mark.postgres
def test_the_bench_runs_it_on_postgres_with_outcomes_pushed_as_on_the_stack(postgres_server):
    result = baseline(300, "baseline_pipeline", postgres=postgres_server)

    assert result["benchmark"] == "baseline_pipeline_postgres_300"
    assert result["ledger"] == "postgresql"
    assert result["pushed_event_posts"] > 0  # the mock posted outcomes to the plugin app's webhook
    final = result["summary"]["by_status"]
    assert set(final) <= {"delivered", "bounced", "failed"}
    # every valid, unique contact of the generated file, counted independently of the pipeline's parser
    assert sum(final.values()) == result["contacts"] == len(expected_contacts(BENCH_DIR / "files" / "contacts_300.csv"))
    assert result["summary"]["messages_sent"] == result["contacts"] + result["summary"]["resent_after_block"]
    # the stack's whole job: each message (the mock's journal) carried a signed List-Unsubscribe link
    assert result["messages_with_unsubscribe_link"] == result["summary"]["messages_sent"]
    # who used the CPU: the program (with its send processes), the mock, the webhook app, Postgres
    assert set(result["cpu_seconds"]) == {"program", "mock-esp", "events-app", "postgres"}
    assert result["cpu_seconds"]["program"] > 0.5  # at least its interpreters' start (Airflow's SDK: the DAG file)
    assert result["cpu_seconds"]["events-app"] > 0  # it recorded the pushed outcomes
