"""Run welcome_emails once on the embedded default: no Postgres, no Docker, nothing left running.

    python -m include.run_embedded [CSV]          (what `make run CSV=...` calls)

- Airflow home: ``.airflow/`` in the project (SQLite metadata DB, created on first use).
- Ledger: ``data/ledger.db`` (SQLite), unless AIRFLOW_CONN_CONTACTS_DB names another one.
- Email provider: the mock ESP, started on a free port and stopped afterwards, unless
  AIRFLOW_CONN_ESP_DEFAULT names a running one.
- Then ``airflow dags test welcome_emails -c '{"csv_path": CSV}'``; its full log goes to
  ``.airflow/logs/``; the run's report is printed at the end. Exit code 0 only when the run succeeded.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

PROJECT_ROOT = Path(__file__).resolve().parents[1]
AIRFLOW_HOME = PROJECT_ROOT / ".airflow"
DATA_DIR = PROJECT_ROOT / "data"
MOCK_ESP_KEY = "mock-esp-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def project_env(home: Path) -> dict[str, str]:
    """This process's environment, with Airflow pointed at this project and the given home."""
    env = dict(os.environ)
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")])),
        }
    )
    env.setdefault("WELCOME_MAILER_HOME", str(PROJECT_ROOT))
    return env


def esp_connection(port: int, api_key: str) -> str:
    """AIRFLOW_CONN_ESP_DEFAULT (JSON form) for a mock ESP on this machine."""
    return json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": port, "password": api_key})


def airflow_env(home: Path = AIRFLOW_HOME) -> dict[str, str]:
    """The environment every Airflow command of the embedded default runs with."""
    env = project_env(home)
    env.update(
        {
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        }
    )
    env.setdefault("WELCOME_MAILER_POKE_SECONDS", "1")
    env.setdefault("AIRFLOW_CONN_CONTACTS_DB", json.dumps({"conn_type": "sqlite", "host": str(DATA_DIR / "ledger.db")}))
    return env


def ensure_metadata_db(env: dict[str, str]) -> None:
    """`airflow db migrate` once per Airflow version (it is idempotent, but takes seconds)."""
    home = Path(env["AIRFLOW_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    stamp = home / "migrated-version"
    version = importlib.metadata.version("apache-airflow")
    if stamp.exists() and stamp.read_text() == version and (home / "airflow.db").exists():
        return
    print(f"setting up the Airflow metadata DB in {home} ...", flush=True)
    subprocess.run([_airflow(), "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)
    stamp.write_text(version)


def migrate_ledger(env: dict[str, str]) -> None:
    """Bring the ledger named by AIRFLOW_CONN_CONTACTS_DB to the code's schema (tasks only check it). The
    JSON form is read here, without starting Airflow; any other form goes through `welcome-mailer db migrate`."""
    value = env["AIRFLOW_CONN_CONTACTS_DB"]
    if not value.lstrip().startswith("{"):
        subprocess.run([str(Path(sys.executable).with_name("welcome-mailer")), "db", "migrate"], env=env, check=True)
        return
    from welcome_mailer.ledger import connect
    from welcome_mailer.ledger.engine import url_from_connection_json
    from welcome_mailer.ledger.migrate import upgrade

    engine = connect(url_from_connection_json(value))
    try:
        before, after = upgrade(engine)
    finally:
        engine.dispose()
    if before != after:
        print(f"migrated the ledger's schema from {before} to {after}", flush=True)


def _airflow() -> str:
    return str(Path(sys.executable).with_name("airflow"))


@contextmanager
def mock_esp(env: dict[str, str], log_dir: Path):
    """Start the mock ESP on a free port unless AIRFLOW_CONN_ESP_DEFAULT is set.

    Yields the env to use and a function that waits until the ESP answers: it starts while Airflow
    imports, so the two start-ups overlap instead of adding up."""
    if env.get("AIRFLOW_CONN_ESP_DEFAULT"):
        yield env, lambda: None
        return
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    with (log_dir / "mock_esp.log").open("a") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "include.mock_esp", "--port", str(port), "--api-key", MOCK_ESP_KEY],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield (
            {**env, "AIRFLOW_CONN_ESP_DEFAULT": esp_connection(port, MOCK_ESP_KEY)},
            lambda: wait_healthy(f"http://127.0.0.1:{port}/healthz", process),
        )
    finally:
        process.terminate()
        process.wait(timeout=10)


def wait_healthy(url: str, process: subprocess.Popen | None = None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the mock ESP exited with code {process.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not become healthy within {timeout}s")


def newest_report(reports_dir: Path, since: float) -> Path | None:
    reports = [p for p in reports_dir.glob("*/report.md") if p.stat().st_mtime >= since]
    return max(reports, key=lambda p: p.stat().st_mtime, default=None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv", nargs="?", default="input.csv", help="the contact list (default: input.csv)")
    args = parser.parse_args(argv)
    env = airflow_env()
    csv_path = str(Path(args.csv).resolve())
    env.setdefault("WELCOME_MAILER_DATA_ROOTS", os.pathsep.join([str(PROJECT_ROOT), str(Path(csv_path).parent)]))
    reports_dir = Path(env.setdefault("WELCOME_MAILER_REPORTS_DIR", str(DATA_DIR / "reports")))
    DATA_DIR.mkdir(exist_ok=True)
    ensure_metadata_db(env)
    migrate_ledger(env)
    log_dir = AIRFLOW_HOME / "logs"
    started = time.time()
    run_log = log_dir / f"welcome_emails-{time.strftime('%Y%m%dT%H%M%S')}.log"
    with mock_esp(env, log_dir) as (run_env, esp_ready):
        print(f"running welcome_emails on {csv_path} (full log: {run_log}) ...", flush=True)
        with run_log.open("w") as log:
            process = subprocess.Popen(
                [_airflow(), "dags", "test", "welcome_emails", "-c", json.dumps({"csv_path": csv_path})],
                env=run_env,
                cwd=PROJECT_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                esp_ready()
            except RuntimeError:
                process.terminate()
                raise
            returncode = process.wait()
    seconds = time.time() - started
    report = newest_report(reports_dir, started)
    if report is not None:
        print(report.read_text())
    failed = returncode != 0 or "state=failed" in run_log.read_text()
    if failed:
        print("".join(run_log.read_text().splitlines(keepends=True)[-30:]))
        print(f"welcome_emails FAILED after {seconds:.1f}s; full log: {run_log}")
        return 1
    print(f"welcome_emails succeeded in {seconds:.1f}s end to end; report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
