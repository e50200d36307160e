"""The ledger's Postgres engine: a pooled connection is pinged before use only after sitting idle, and
one the server dropped meanwhile is replaced without the caller noticing."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from welcome_mailer.ledger import connect
from welcome_mailer.ledger import engine as ledger_engine

pytestmark = pytest.mark.postgres


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


def test_back_to_back_transactions_are_not_pinged_and_an_idle_connection_is(pings, monkeypatch):
    """Issue 14: a ping at every checkout (pool_pre_ping) was a round trip per ledger transaction, 200 in a
    100k-contact send task."""
    engine, counted = pings
    pids = {backend_pid(engine) for _ in range(20)}
    assert len(pids) == 1 and counted == []
    monkeypatch.setattr(ledger_engine, "PING_AFTER_IDLE_SECONDS", 0.0)  # as if it had sat idle for long
    assert backend_pid(engine) in pids
    assert counted == list(pids)


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
