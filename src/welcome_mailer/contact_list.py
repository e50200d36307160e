"""The operator's list of contacts and the questions around it: is this a run of the DAG (the pages read
only the report folders of runs the ledger knows)."""

from __future__ import annotations

from sqlalchemy import select

from welcome_mailer.ledger.rules import Ledger
from welcome_mailer.ledger.schema import ledger_runs


def run_exists(ledger: Ledger, run_id: str) -> bool:
    """A run of the DAG that the ledger knows (``ledger_runs``): the only ids whose report folder the pages
    read. ``.`` and ``..`` never are (they would name a folder that is not a run's)."""
    if run_id in (".", "..") or not run_id:
        return False
    with ledger.engine.connect() as conn:
        return conn.execute(select(ledger_runs.c.run_id).where(ledger_runs.c.run_id == run_id)).first() is not None
