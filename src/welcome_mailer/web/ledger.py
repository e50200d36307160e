"""The ledger as the plugin app reaches it: ``WELCOME_MAILER_LEDGER_URL`` (a SQLAlchemy URL, for the app
started on its own), else Airflow's ``contacts_db`` connection from its secrets backends (environment,
then the metadata database), as the api-server sees them."""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import cache

from welcome_mailer.ledger import Ledger, connect
from welcome_mailer.ledger.engine import url_from_connection
from welcome_mailer.ledger.migrate import check_at_head

LEDGER_CONN_ID = "contacts_db"  # hooks.ledger's, not imported: that module loads the Task SDK


def _url():
    url = os.environ.get("WELCOME_MAILER_LEDGER_URL")
    if url:
        return url
    from airflow.models.connection import Connection

    return url_from_connection(Connection.get_connection_from_secrets(LEDGER_CONN_ID))


@cache
def get_ledger() -> Ledger:
    """Opened on first use, after checking the schema (raises, so a failure is not cached)."""
    engine = connect(_url())
    check_at_head(engine)
    return Ledger(engine)


def ledger_source() -> Callable[[], Ledger]:
    """FastAPI dependency: how a route gets the ledger, called only once the caller is verified (tests
    override it)."""
    return get_ledger
