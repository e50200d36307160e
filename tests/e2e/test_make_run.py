"""`make run` (include.local.run_embedded) as a newcomer meets it: a bad path, a failing run, Ctrl-C, a crash."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from include.local.run_embedded import AIRFLOW_CLI, PROJECT_ROOT, airflow_env, run_id_from_log
from include.tools.generate_contacts import write_file
from tests.support.invariants import assert_ledger_matches, assert_run_invariants, expected_contacts


@pytest.fixture
def home(migrated_airflow_home, tmp_path) -> Path:
    """A migrated Airflow home of this test's own (its runs/ records the test's runs)."""
    return Path(shutil.copytree(migrated_airflow_home, tmp_path / "home"))


def runner_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("AIRFLOW_HOME", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW_CONN_ESP_DEFAULT"):
        env.pop(name, None)  # the runner sets its own
    env.update(
        {
            "AIRFLOW_CONN_CONTACTS_DB": json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "ledger.db")}),
            "WELCOME_MAILER_REPORTS_DIR": str(tmp_path / "reports"),
            **extra,
        }
    )
    return env


def start_runner(home: Path, env: dict[str, str], csv: Path | str, output: Path) -> subprocess.Popen:
    """`python -m include.local.run_embedded` in a session of its own (as a terminal's job is)."""
    with output.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "include.local.run_embedded", str(csv), "--airflow-home", str(home)],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_for_sending(home: Path, runner: subprocess.Popen, timeout: float = 120) -> None:
    """Until the run's first send task has started."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert runner.poll() is None, "the run ended before sending"
        if any("starting task_id=send_batch" in log.read_text() for log in (home / "logs").glob("welcome_emails-*")):
            return
        time.sleep(0.2)
    pytest.fail("the run did not start sending in time")


def wait_for_first_requests(ledger: Path, timeout: float = 120) -> None:
    """Until the run has recorded attempts in its ledger: its first ESP requests are then on their way.
    (Not the ESP's log: reading it pays the mock's latency too, and by then the sends were over.)"""
    deadline = time.monotonic() + timeout
    while not _attempts_recorded(ledger):
        if time.monotonic() > deadline:
            pytest.fail("the run recorded no send attempt in time")
        time.sleep(0.05)


def _attempts_recorded(ledger: Path) -> bool:
    try:
        with contextlib.closing(sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=1)) as db:
            return bool(db.execute("SELECT count(*) FROM send_attempts").fetchone()[0])
    except sqlite3.OperationalError:  # not created yet, or busy
        return False


def processes_of(session: int) -> list[psutil.Process]:
    """The live processes of a session (zombies are dead, waiting to be reaped)."""
    return [p for p in psutil.process_iter() if _sid(p) == session and _status(p) != psutil.STATUS_ZOMBIE]


def _status(process: psutil.Process) -> str | None:
    try:
        return process.status()
    except psutil.NoSuchProcess:
        return None


def _sid(process: psutil.Process) -> int | None:
    try:
        return os.getsid(process.pid)
    except (ProcessLookupError, PermissionError):
        return None


@pytest.mark.alone
def test_missing_csv_fails_in_a_second_with_the_reason(tmp_path):
    started = time.monotonic()
    completed = subprocess.run(
        [sys.executable, "-m", "include.local.run_embedded", "missing.csv", "--airflow-home", str(tmp_path / "home")],
        cwd=PROJECT_ROOT,
        env=runner_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=30,
    )
    seconds = time.monotonic() - started
    assert completed.returncode != 0
    assert "csv_path" in completed.stderr and "missing.csv' does not exist" in completed.stderr
    assert seconds < 2, f"took {seconds:.1f}s"
    assert not (tmp_path / "home").exists(), "nothing was started"


@pytest.mark.slow
def test_a_bad_ledger_connection_stops_make_run_before_it_starts_anything(home, tmp_path):
    csv = write_file(tmp_path / "contacts.csv", rows=50)
    env = runner_env(tmp_path, AIRFLOW_CONN_CONTACTS_DB=json.dumps({"conn_type": "mysql", "host": "nowhere"}))
    output = tmp_path / "out.txt"
    started = time.monotonic()
    assert start_runner(home, env, csv, output).wait(timeout=60) == 2
    assert time.monotonic() - started < 10
    assert "welcome_emails not started: the ledger (AIRFLOW_CONN_CONTACTS_DB) cannot be used: the ledger " in (
        output.read_text()
    )
    assert "must be of type postgres or sqlite, not 'mysql'" in output.read_text()


@pytest.mark.slow
def test_a_failing_run_prints_the_failing_task_and_its_error(home, tmp_path):
    csv = write_file(tmp_path / "contacts.csv", rows=50)
    (tmp_path / "a-file").write_text("not a directory")
    env = runner_env(tmp_path, WELCOME_MAILER_REPORTS_DIR=str(tmp_path / "a-file" / "reports"))  # parse can't write
    output = tmp_path / "out.txt"
    runner = start_runner(home, env, csv, output)
    assert runner.wait(timeout=240) == 1
    text = output.read_text()
    assert "welcome_emails FAILED" in text
    assert "failed task parse: NotADirectoryError: " in text
    lines = text.splitlines()
    assert lines[-1].startswith("full log: ") and Path(lines[-1].removeprefix("full log: ")).exists()
    # The same reason, as another DAG's task (the drop folder's file_away) reads it from the failed run.
    run_id = run_id_from_log(Path(lines[-1].removeprefix("full log: ")))
    assert read_failure_reason(home, tmp_path, run_id).startswith("parse: NotADirectoryError: ")


READER_DAG = """
import json, pathlib, pendulum
from airflow.sdk import dag, task

@dag(schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"))
def read_failure():
    @task
    def read(params=None, ti=None):
        from welcome_mailer.run_failure import run_failure_reason

        reason = run_failure_reason(ti, "welcome_emails", params["run_id"])
        pathlib.Path(params["out"]).write_text(json.dumps(reason))

    read()

read_failure()
"""


def read_failure_reason(home: Path, tmp_path: Path, run_id: str) -> str | None:
    """What ``run_failure_reason`` says about ``run_id``, asked by a task of another DAG under `dags test`."""
    dags = tmp_path / "reader_dags"
    dags.mkdir()
    (dags / "read_failure.py").write_text(READER_DAG)
    out = tmp_path / "reason.json"
    env = {**airflow_env(home), "AIRFLOW__CORE__DAGS_FOLDER": str(dags)}
    conf = json.dumps({"run_id": run_id, "out": str(out)})
    subprocess.run([*AIRFLOW_CLI, "dags", "test", "read_failure", "-c", conf], env=env, cwd=PROJECT_ROOT,
                   check=True, capture_output=True, timeout=240)  # fmt: skip
    return json.loads(out.read_text())


@pytest.mark.slow
def test_ctrl_c_during_the_send_phase_stops_everything_and_says_how_to_resume(home, tmp_path):
    csv = write_file(tmp_path / "contacts.csv", rows=4000)
    output = tmp_path / "out.txt"
    runner = start_runner(home, runner_env(tmp_path, MOCK_ESP_LATENCY_MS="1000"), csv, output)
    try:
        wait_for_sending(home, runner)
        children = [p for p in processes_of(runner.pid) if p.pid != runner.pid]
        assert len(children) == 2, children  # airflow dags test and the mock ESP
        interrupted = time.monotonic()
        runner.send_signal(signal.SIGINT)  # to run_embedded alone: it must stop its children itself
        assert runner.wait(timeout=10) == 130
        _, alive = psutil.wait_procs(children, timeout=max(0.1, 10 - (time.monotonic() - interrupted)))
        assert not alive, f"still running 10 s after Ctrl-C: {alive}"
        assert time.monotonic() - interrupted < 10
    finally:
        for process in processes_of(runner.pid):
            process.kill()
    text = output.read_text()
    assert "interrupted (SIGINT)" in text and "released its unfinished contacts" in text
    assert f"To resume: make run CSV={csv}" in text
    assert list((home / "runs").glob("*.json")) == [], "the interrupted run is released, not left recorded"


@pytest.mark.slow
def test_after_a_crash_the_next_run_resumes_at_once_and_nobody_gets_two_emails(home, tmp_path, start_esp):
    # One ESP for both runs, as a real provider outlives our processes: its log is the proof.
    latency = 2.0  # each ESP request: the first requests are answered after 2 s, the next ones after 4 s
    esp = start_esp(latency_ms=latency * 1000, hold_rate=0.2, hold_min_seconds=0.2, hold_max_seconds=1.0)
    csv = write_file(tmp_path / "contacts.csv", rows=4000)
    env = runner_env(tmp_path, AIRFLOW_CONN_ESP_DEFAULT=json.dumps(esp.connection))
    crashed = start_runner(home, env, csv, tmp_path / "crashed.txt")
    try:
        wait_for_sending(home, crashed)
        wait_for_first_requests(tmp_path / "ledger.db")
        time.sleep(1.5 * latency)  # between the first requests' answers and the next ones
    finally:
        os.killpg(crashed.pid, signal.SIGKILL)  # the whole `make run`, mid-send
    crashed.wait(timeout=10)
    assert psutil.wait_procs(processes_of(crashed.pid), timeout=10)[1] == [], "SIGKILL of the group ends it all"
    sent_before = len(esp.messages())
    contacts = expected_contacts(csv)
    assert 0 < sent_before < len(contacts), "the crash happened mid-send"

    output = tmp_path / "resumed.txt"
    resumed = start_runner(home, env, csv, output)
    assert resumed.wait(timeout=240) == 0, output.read_text()[-3000:]
    text = output.read_text()
    assert "resuming the interrupted run manual__" in text
    report = json.loads(next((tmp_path / "reports").glob("*/report.json")).read_text())
    assert report["taken_over"] > 0 and report["held_by_other_runs"] == 0
    assert report["claimed"] == len(contacts)
    messages = esp.messages()
    assert_run_invariants(messages, contacts, max_attempts=5)
    assert_ledger_matches(f"sqlite:///{tmp_path / 'ledger.db'}", messages)
