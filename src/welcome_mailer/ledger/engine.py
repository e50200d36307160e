"""Opening the ledger database: the SQLAlchemy URL from a connection's fields, and engines with the
settings each backend needs for safe concurrency."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL
from sqlalchemy.exc import DisconnectionError

# libpq connection parameters a Postgres connection's extra may carry (sslmode, sslrootcert, ...); other
# extra keys are Airflow's own (e.g. cursor) and are not passed to the driver.
LIBPQ_PARAMETERS = frozenset(
    {
        "sslmode", "sslcert", "sslkey", "sslrootcert", "sslcrl", "sslpassword", "application_name",
        "connect_timeout", "options", "keepalives", "keepalives_idle", "keepalives_interval",
        "keepalives_count", "target_session_attrs", "gssencmode", "channel_binding",
    }
)  # fmt: skip
POSTGRES_TYPES = ("postgres", "postgresql")
SQLITE_TYPES = ("sqlite",)
# A pooled Postgres connection idle for longer is pinged before use (see connect); the transactions of a
# task that works run back to back, well within it.
PING_AFTER_IDLE_SECONDS = 10.0
# SQLite's page cache, in KiB, for a transaction that writes a whole run's rows at once (the claim: every
# contact and its first attempt), and SQLite's default, which every connection has otherwise. The claim's
# rows land on random pages of its indexes (an idempotency key is a hash): in 2 MiB, pages were read again
# and dirty ones spilled to the WAL before the commit. The claim of 1M contacts: 17.4-17.5 -> 13.7-14.0 s
# (32 MiB: 14.1 s). Not for every transaction: each of a task's pooled connections keeping 64 MiB took
# `make run`'s process from 364 to 680 MB at 1M, setting it around each of a run's thousands of small
# transactions cost what it saved, and one writing connection per process keeping it gained nothing beyond
# the noise (docs/performance-history.md, 2026-12-07).
SQLITE_BULK_CACHE_KIB = 65536
SQLITE_DEFAULT_CACHE_KIB = 2000


def ledger_url(
    conn_type: str,
    *,
    host: str | None = None,
    port: int | None = None,
    login: str | None = None,
    password: str | None = None,
    schema: str | None = None,
    extra: Mapping[str, object] | None = None,
) -> URL:
    """The ledger's URL from an Airflow connection's fields: ``postgres`` (schema = database; libpq
    parameters from the extra, e.g. sslmode) or ``sqlite`` (host = the database file's path)."""
    if conn_type in SQLITE_TYPES:
        if not host:
            raise ValueError("a sqlite ledger connection needs the database file's path as its host")
        return URL.create("sqlite", database=host)
    if conn_type in POSTGRES_TYPES:
        query = {key: str(value) for key, value in (extra or {}).items() if key in LIBPQ_PARAMETERS}
        return URL.create(
            "postgresql+psycopg2",
            username=login or "postgres",
            password=password or None,
            host=host or "127.0.0.1",
            port=port or 5432,
            database=schema or "postgres",
            query=query,
        )
    raise ValueError(f"the ledger connection must be of type postgres or sqlite, not {conn_type!r}")


def url_from_connection(conn) -> URL:
    """The ledger's URL from an Airflow connection object (the Task SDK's or the server's: same fields)."""
    return ledger_url(
        conn.conn_type,
        host=conn.host,
        port=conn.port,
        login=conn.login,
        password=conn.password,
        schema=conn.schema,
        extra=conn.extra_dejson,
    )


READ_SNAPSHOT = "welcome_mailer_read_snapshot"  # execution option: a read-only transaction (see connect)


def connect(url: str | URL) -> Engine:
    """An engine for the ledger database; SQLite gets WAL and IMMEDIATE transactions for safe concurrency
    (deferred for a read with the READ_SNAPSHOT option), Postgres sessions without JIT."""
    if str(url).startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_connection, _record) -> None:
            dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself, below
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(connection) -> None:
            # Take the write lock up front: two claimers never interleave, and never deadlock upgrading.
            # A long read that writers must not wait for (READ_SNAPSHOT) takes none: WAL gives it a snapshot.
            read_only = connection.get_execution_options().get(READ_SNAPSHOT)
            connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

        return engine
    engine = create_engine(url)
    _ping_when_idle(engine)

    @event.listens_for(engine, "connect")
    def _postgres_connect(dbapi_connection, _record) -> None:
        # No JIT: the ledger runs short statements driven by index probes, whose row estimates are high
        # on purpose (bulk.probe, bulk.update_rows). Over jit_above_cost, each lookup of record_outcomes
        # spent ten times longer compiling than running (EXPLAIN ANALYZE).
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET jit = off")
        dbapi_connection.commit()  # a SET inside a transaction that is rolled back would be undone

    return engine


@contextmanager
def bulk_write_cache(conn: Connection) -> Iterator[None]:
    """On SQLite, ``sqlite_bulk_cache`` for the connection (begin its transaction inside the block);
    nothing on Postgres."""
    if conn.dialect.name != "sqlite":
        yield
        return
    with sqlite_bulk_cache(conn.connection.dbapi_connection):  # not conn.execute: it would begin a transaction
        yield


@contextmanager
def sqlite_bulk_cache(dbapi_connection: sqlite3.Connection) -> Iterator[None]:
    """The SQLite connection's page cache is SQLITE_BULK_CACHE_KIB while the block runs, then the default
    again, which frees the pages."""
    dbapi_connection.execute(f"PRAGMA cache_size=-{SQLITE_BULK_CACHE_KIB}")
    try:
        yield
    finally:
        # Closed meanwhile (SQLAlchemy closes a connection it invalidates): the block's error is the one to see.
        with suppress(sqlite3.ProgrammingError):
            dbapi_connection.execute(f"PRAGMA cache_size=-{SQLITE_DEFAULT_CACHE_KIB}")


def _ping_when_idle(engine: Engine) -> None:
    """Ping a pooled connection before use when it sat idle in the pool for PING_AFTER_IDLE_SECONDS or
    more, and replace it if the server dropped it (a restart, a failover, an idle timeout): what
    ``pool_pre_ping`` does at every checkout, which cost a round trip per ledger transaction, 200 of them in
    a 100k-contact send task (1 s of its 5.4 s, cProfile). A connection that failed mid-transaction is
    invalidated by SQLAlchemy itself, and the task's retry starts afresh."""

    @event.listens_for(engine, "checkin")
    def _idle_from(_dbapi_connection, record) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_connection, record, _proxy) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as exc:
            if engine.dialect.is_disconnect(exc, dbapi_connection, None):
                raise DisconnectionError(f"the ledger's connection was dropped while idle: {exc}") from exc
            raise


def url_from_connection_json(value: str) -> URL:
    """The ledger's URL from an Airflow connection in its JSON form (as in AIRFLOW_CONN_CONTACTS_DB), for
    tools that run before Airflow does (``make run`` migrates the ledger while Airflow starts)."""
    fields = json.loads(value)
    extra = fields.get("extra") or {}
    return ledger_url(
        fields.get("conn_type", ""),
        host=fields.get("host"),
        port=fields.get("port"),
        login=fields.get("login"),
        password=fields.get("password"),
        schema=fields.get("schema"),
        extra=json.loads(extra) if isinstance(extra, str) else extra,
    )
