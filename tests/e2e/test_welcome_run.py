"""Whole runs of welcome_emails through `airflow dags test`, as users run it, proven from the ESP's log."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from include.tools.generate_contacts import generate_rows, write_file
from tests.support.dags_test import ESP_FLAGS, MAX_ATTEMPTS, run_welcome, sqlite_ledger
from tests.support.invariants import assert_ledger_matches, assert_run_invariants, expected_contacts

pytestmark = pytest.mark.slow


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
    in_second = expected_contacts(second)  # once: email-validator over the file is not cheap
    reachable = {e: n for e, n in second_contacts.items() if e in in_second}
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
