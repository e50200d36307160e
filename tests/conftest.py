"""Shared fixtures: a real mock ESP over HTTP, throwaway Postgres databases, ledgers on both backends."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest

from tests.support import PROJECT_ROOT
from tests.support.esp import RunningEsp, launch_esp

# Airflow reads its configuration on first import: point it at a throwaway home before any test imports it.
_TEST_AIRFLOW_HOME = tempfile.mkdtemp(prefix="welcome-mailer-airflow-")
os.environ["AIRFLOW_HOME"] = _TEST_AIRFLOW_HOME
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(PROJECT_ROOT / "dags")
os.environ.setdefault("WELCOME_MAILER_HOME", str(PROJECT_ROOT))
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_TEST_AIRFLOW_HOME}/airflow.db"
POSTGRES_ADMIN_URL = os.environ.get("WELCOME_MAILER_TEST_POSTGRES", "postgresql+psycopg2://postgres@127.0.0.1:5432")


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
    from include.bench.postgres import scratch_database

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
    from tests.support.s3 import launch_s3

    server = launch_s3(tmp_path_factory.mktemp("s3"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_denying_server(tmp_path_factory):
    """A local S3 API that denies every request (IAM checked, no user exists)."""
    from tests.support.s3 import launch_s3

    server = launch_s3(tmp_path_factory.mktemp("s3-denying"), deny_all=True)
    yield server
    server.stop()


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`make test` runs on two processes (pytest-xdist): every test under tests/stack/ goes to one of them, as
    one unit of work handed out first (the largest), so one stack serves them all. xdist's own
    `--dist loadgroup` cannot do it on this pytest: it renames a private attribute pytest 9 no longer reads."""
    from xdist.scheduler import LoadScopeScheduling

    class OneStack(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "tests/stack/" if nodeid.startswith("tests/stack/") else nodeid

    return OneStack(config, log)
