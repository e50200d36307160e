"""Postgres helpers of the bench and the tests: a throwaway database, and a table's row-update counts."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text


@contextmanager
def scratch_database(server: str, prefix: str, keep: bool = False) -> Iterator[str]:
    """A new empty Postgres database on ``server`` (a SQLAlchemy URL without a database): yields its URL,
    drops it after (unless ``keep``)."""
    name = f"{prefix}{uuid.uuid4().hex[:8]}"
    admin = create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield f"{server}/{name}"
    finally:
        if not keep:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def row_updates(engine, table: str, at_least: int = 0) -> dict:
    """The table's row updates so far and how many were heap-only (HOT: no index entry written), from
    Postgres's statistics. A backend reports its own when it exits, so ``engine``'s connections are closed
    first, and the figures read again until they show ``at_least`` updates (10 s at most)."""
    engine.dispose()
    deadline = time.monotonic() + 10
    while True:
        with engine.connect() as conn:
            updates, heap_only = conn.execute(
                text("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = :table"),
                {"table": table},
            ).one()
        if updates >= at_least or time.monotonic() > deadline:
            return {"updates": updates, "heap_only": heap_only}
        time.sleep(0.1)
