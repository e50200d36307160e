"""Shared fixtures: a real mock ESP over HTTP, throwaway Postgres databases, ledgers on both backends."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from include.run_embedded import free_port, wait_healthy

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# Airflow reads its configuration on first import: point it at a throwaway home before any test imports it.
_TEST_AIRFLOW_HOME = tempfile.mkdtemp(prefix="welcome-mailer-airflow-")
os.environ["AIRFLOW_HOME"] = _TEST_AIRFLOW_HOME
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(PROJECT_ROOT / "dags")
os.environ.setdefault("WELCOME_MAILER_HOME", str(PROJECT_ROOT))
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_TEST_AIRFLOW_HOME}/airflow.db"
POSTGRES_ADMIN_URL = os.environ.get("WELCOME_MAILER_TEST_POSTGRES", "postgresql+psycopg2://postgres@127.0.0.1:5432")
API_KEY = "test-key"


def read_message_log(client: httpx.Client, **filters) -> list[dict]:
    """An ESP's whole message log, in acceptance order, paged with the cursor; retries the faults a test
    may have switched on (503, 429) for a bounded time."""
    found, cursor = [], None
    deadline = time.monotonic() + 60
    while True:
        params = {"limit": 1000, **filters, **({"cursor": cursor} if cursor else {})}
        response = client.get("/v1/messages", params=params)
        if response.status_code in (429, 503) and time.monotonic() < deadline:
            time.sleep(0.05)
            continue
        page = response.raise_for_status().json()
        found.extend(page["messages"])
        cursor = page["next_cursor"]
        if cursor is None:
            return found


@dataclass
class RunningEsp:
    """A mock ESP process, and the audit-log reads the tests prove things with."""

    url: str
    api_key: str
    process: subprocess.Popen
    log_path: Path
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.api_key}"})

    @property
    def connection(self) -> dict:
        host, port = self.url.removeprefix("http://").split(":")
        return {"conn_type": "http", "host": host, "port": int(port), "password": self.api_key}

    def messages(self, **filters) -> list[dict]:
        return read_message_log(self.client, **filters)

    def stop(self) -> None:
        self.client.close()
        self.process.terminate()
        self.process.wait(timeout=10)


def launch_esp(log_dir: Path, **flags) -> RunningEsp:
    """Start a mock ESP process with the given flags (``hold_rate=0`` -> ``--hold-rate 0``)."""
    port = free_port()
    args = [sys.executable, "-m", "include.mock_esp", "--port", str(port), "--api-key", API_KEY]
    for name, value in flags.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    log_path = log_dir / f"mock_esp_{port}.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(args, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT)
    esp = RunningEsp(f"http://127.0.0.1:{port}", API_KEY, process, log_path)
    wait_healthy(f"{esp.url}/healthz", process)
    return esp


@pytest.fixture
def start_esp(tmp_path) -> Iterator:
    """Start mock ESPs with the given flags; all stop at teardown."""
    started: list[RunningEsp] = []

    def start(**flags) -> RunningEsp:
        started.append(launch_esp(tmp_path, **flags))
        return started[-1]

    yield start
    for esp in started:
        esp.stop()


@pytest.fixture
def esp(start_esp) -> RunningEsp:
    """The mock ESP with default outcomes but no holds (fast tests)."""
    return start_esp(hold_rate=0)


def _postgres_available() -> str | None:
    from sqlalchemy import create_engine, text

    try:
        engine = create_engine(f"{POSTGRES_ADMIN_URL}/postgres", connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:  # any failure means: no usable server
        return f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: {exc.__class__.__name__}"


@pytest.fixture(scope="session")
def postgres_server() -> str:
    reason = _postgres_available()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (required under CI=true)")
        pytest.skip(reason)
    return POSTGRES_ADMIN_URL


@pytest.fixture
def postgres_url(postgres_server) -> Iterator[str]:
    """A fresh database, dropped afterwards."""
    from include.bench import scratch_database

    with scratch_database(postgres_server, "wm_test_") as url:
        try:
            yield url
        finally:
            from welcome_mailer.hooks.ledger import _check_schema_once, _engine

            _engine.cache_clear()
            _check_schema_once.cache_clear()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def ledger_url(request, tmp_path) -> str:
    """The ledger's SQLAlchemy URL, once on SQLite and once on Postgres."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def ledger(ledger_url):
    from welcome_mailer.ledger import Ledger, connect
    from welcome_mailer.ledger.migrate import upgrade

    engine = connect(ledger_url)
    upgrade(engine)
    ledger = Ledger(engine)
    yield ledger
    engine.dispose()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A local S3 API (moto server) for the session; tests use their own buckets."""
    from tests.s3 import launch_s3

    server = launch_s3(tmp_path_factory.mktemp("s3"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_denying_server(tmp_path_factory):
    """A local S3 API that denies every request (IAM checked, no user exists)."""
    from tests.s3 import launch_s3

    server = launch_s3(tmp_path_factory.mktemp("s3-denying"), deny_all=True)
    yield server
    server.stop()
