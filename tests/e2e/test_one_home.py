"""One home for `make run`'s files (issue 30, item 6): with WELCOME_MAILER_HOME set, `make run` writes the
ledger and the reports under it, and the operator commands and `make events` find them there: a one-click
POST used to get HTTP 500 (they looked elsewhere) while /health said ok."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
import time

import httpx
import pytest

from include.local.net import free_port, wait_healthy
from include.local.run_embedded import PROJECT_ROOT
from include.tools.generate_contacts import write_file
from welcome_mailer.unsubscribe import UnsubscribeSettings, list_unsubscribe_headers

pytestmark = pytest.mark.slow


def test_make_run_events_and_operator_commands_share_welcome_mailer_home(migrated_airflow_home, tmp_path):
    home = tmp_path / "home"
    airflow_home = shutil.copytree(migrated_airflow_home, tmp_path / "airflow")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "WELCOME_MAILER_"))}
    env["WELCOME_MAILER_HOME"] = str(home)
    csv = write_file(tmp_path / "contacts.csv", rows=20)
    run = subprocess.run(
        [sys.executable, "-m", "include.local.run_embedded", str(csv), "--airflow-home", str(airflow_home)],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert (home / "data" / "ledger.db").exists() and (home / "data" / "erase_key").exists()
    [report] = (home / "data" / "reports").glob("*/report.md")
    assert str(report) in run.stdout, "the report make run names is the one under the home"
    with contextlib.closing(sqlite3.connect(home / "data" / "ledger.db")) as db:
        [email] = db.execute("SELECT email FROM sent_contacts WHERE status = 'delivered' LIMIT 1").fetchone()

    # the operator commands (the Makefile's, as a user types them) find the contact
    lookup = subprocess.run(
        ["make", "-s", "-o", ".venv/bin/.installed", "contact", f"EMAIL={email}"],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert lookup.returncode == 0 and "not in the ledger" not in lookup.stdout, lookup.stdout + lookup.stderr

    # make events (python -m welcome_mailer.web) serves the same ledger: healthy, and one-click works
    port = free_port()
    base = f"http://127.0.0.1:{port}/welcome-mailer"
    unsubscribe = UnsubscribeSettings(f"{base}/unsubscribe", "unsub-secret")
    web_env = {
        **env,
        "WELCOME_MAILER_UNSUBSCRIBE_URL": unsubscribe.url,
        "WELCOME_MAILER_UNSUBSCRIBE_SECRET": "unsub-secret",
    }
    with (tmp_path / "web.log").open("w") as log:
        web = subprocess.Popen([sys.executable, "-m", "welcome_mailer.web", "--port", str(port)],
                               cwd=PROJECT_ROOT, env=web_env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_healthy(f"{base}/health", web)
        link = list_unsubscribe_headers(email, unsubscribe)["List-Unsubscribe"][1:-1]
        answer = httpx.post(link, content="List-Unsubscribe=One-Click",
                            headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
        assert answer.status_code == 200, answer.text
    finally:
        web.terminate()
        web.wait(timeout=10)
    lookup = subprocess.run(
        ["make", "-s", "-o", ".venv/bin/.installed", "contact", f"EMAIL={email}"],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "unsubscribed" in lookup.stdout, lookup.stdout


def test_health_fails_when_make_events_finds_no_ledger(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "WELCOME_MAILER_"))}
    env["WELCOME_MAILER_HOME"] = str(tmp_path / "nothing-here")
    port = free_port()
    with (tmp_path / "web.log").open("w") as log:
        web = subprocess.Popen([sys.executable, "-m", "welcome_mailer.web", "--port", str(port)],
                               cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        answer = None
        deadline = time.monotonic() + 60
        while answer is None and time.monotonic() < deadline and web.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                answer = httpx.get(f"http://127.0.0.1:{port}/welcome-mailer/health", timeout=2)
            time.sleep(0.2)
        assert answer is not None, (tmp_path / "web.log").read_text()
        assert answer.status_code == 503 and answer.json()["status"] == "ledger unavailable"
    finally:
        web.terminate()
        web.wait(timeout=10)
