"""Whole runs of welcome_emails through `airflow dags test`, as users run it: the helper end-to-end tests share."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from include.local.run_embedded import airflow_env, migrate_ledger
from welcome_mailer.run_files import REPORT_JSON, run_directory

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
    report_path = run_directory(workspace / "reports", run_id) / REPORT_JSON  # local reports only
    return RunResult(state, output, json.loads(report_path.read_text()) if report_path.exists() else None)


def sqlite_ledger(workspace: Path) -> tuple[dict, str]:
    path = workspace / "ledger.db"
    return {"conn_type": "sqlite", "host": str(path)}, f"sqlite:///{path}"
