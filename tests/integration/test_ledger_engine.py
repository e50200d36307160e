"""The ledger's engines. SQLite: the claim writes with a larger page cache, and gives it back. Postgres: a
pooled connection is pinged before use only after sitting idle, and one the server dropped meanwhile is
replaced without the caller noticing."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import text

from tests.support.ledger import contacts
from welcome_mailer.ledger import Ledger, connect
from welcome_mailer.ledger import engine as ledger_engine
from welcome_mailer.ledger.claims import Claims
from welcome_mailer.ledger.migrate import upgrade


def cache_size(dbapi_connection) -> int:
    return dbapi_connection.execute("PRAGMA cache_size").fetchone()[0]


def test_the_claim_writes_with_the_bulk_page_cache_and_gives_it_back(tmp_path, monkeypatch):
    """A claim writes every contact of a run and its first attempt, onto random pages of their indexes: in
    SQLite's 2 MiB those were read again and spilled to the WAL (1M contacts: 17.4-17.5 -> 13.7-14.0 s). The
    connection goes back to the pool with SQLite's default, so a task's pooled connections do not each
    keep 64 MiB (680 MB in `make run`'s process at 1M)."""
    engine = connect(f"sqlite:///{tmp_path / 'ledger.db'}")
    upgrade(engine)
    ledger = Ledger(engine)
    seen = []
    record_first_attempts = Claims._record_first_attempts

    def recording(conn, run_id, now):
        seen.append((conn.connection.dbapi_connection, cache_size(conn.connection.dbapi_connection)))
        assert conn.in_transaction()
        record_first_attempts(conn, run_id, now)

    monkeypatch.setattr(Claims, "_record_first_attempts", staticmethod(recording))
    try:
        ledger.stage("run-1", contacts("a@example.com", "b@example.com"))
        assert ledger.claim("run-1", 500, 8).claimed_new == 2
        [(claimed_on, claimed_with)] = seen
        assert claimed_with == -ledger_engine.SQLITE_BULK_CACHE_KIB
        assert cache_size(claimed_on) == -ledger_engine.SQLITE_DEFAULT_CACHE_KIB  # back in the pool with it
    finally:
        engine.dispose()


def test_the_bulk_cache_is_given_back_when_the_transaction_fails(tmp_path):
    engine = connect(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        with pytest.raises(ZeroDivisionError), engine.connect() as conn:
            dbapi_connection = conn.connection.dbapi_connection
            with ledger_engine.bulk_write_cache(conn), conn.begin():
                assert cache_size(dbapi_connection) == -ledger_engine.SQLITE_BULK_CACHE_KIB
                conn.exec_driver_sql("CREATE TABLE t (n INTEGER)")
                raise ZeroDivisionError
        assert cache_size(dbapi_connection) == -ledger_engine.SQLITE_DEFAULT_CACHE_KIB
        with engine.connect() as conn:  # rolled back
            assert conn.exec_driver_sql("SELECT count(*) FROM sqlite_master WHERE name = 't'").scalar_one() == 0
    finally:
        engine.dispose()


def test_a_connection_closed_inside_the_block_lets_its_error_through(tmp_path):
    """SQLAlchemy closes a connection it invalidates: the restore must not hide the error with its own."""
    dbapi_connection = sqlite3.connect(tmp_path / "db.sqlite")
    with pytest.raises(ZeroDivisionError), ledger_engine.sqlite_bulk_cache(dbapi_connection):
        assert cache_size(dbapi_connection) == -ledger_engine.SQLITE_BULK_CACHE_KIB
        dbapi_connection.close()
        raise ZeroDivisionError


@pytest.fixture
def pings(postgres_url, monkeypatch):
    """The ledger's engine on a fresh database, and the list its pings are counted in."""
    engine = connect(postgres_url)
    counted: list[int] = []
    do_ping = engine.dialect.do_ping

    def counting_ping(dbapi_connection):
        counted.append(dbapi_connection.info.backend_pid)
        return do_ping(dbapi_connection)

    monkeypatch.setattr(engine.dialect, "do_ping", counting_ping)
    yield engine, counted
    engine.dispose()


def backend_pid(engine) -> int:
    with engine.begin() as conn:
        return conn.execute(text("SELECT pg_backend_pid()")).scalar_one()


@pytest.mark.postgres
def test_back_to_back_transactions_are_not_pinged_and_an_idle_connection_is(pings, monkeypatch):
    """Issue 14: a ping at every checkout (pool_pre_ping) was a round trip per ledger transaction, 200 in a
    100k-contact send task."""
    engine, counted = pings
    pids = {backend_pid(engine) for _ in range(20)}
    assert len(pids) == 1 and counted == []
    monkeypatch.setattr(ledger_engine, "PING_AFTER_IDLE_SECONDS", 0.0)  # as if it had sat idle for long
    assert backend_pid(engine) in pids
    assert counted == list(pids)


@pytest.mark.postgres
def test_a_connection_the_server_dropped_while_idle_is_replaced(pings, postgres_url, monkeypatch):
    """A restart, a failover or an idle timeout drops pooled connections: the next transaction gets a new
    one instead of failing."""
    engine, counted = pings
    dropped = backend_pid(engine)
    admin = connect(postgres_url)
    try:
        with admin.begin() as conn:
            assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": dropped}).scalar_one()
    finally:
        admin.dispose()
    monkeypatch.setattr(ledger_engine, "PING_AFTER_IDLE_SECONDS", 0.0)
    replacement = backend_pid(engine)
    assert replacement != dropped
    assert counted[0] == dropped, "the dropped connection was pinged, found dead, and replaced"
