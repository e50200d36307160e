"""The ledger from an Airflow connection (``contacts_db``): Postgres in production, SQLite embedded."""

from __future__ import annotations

from functools import cache

from airflow.sdk import BaseHook
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL

from welcome_mailer.ledger import Ledger, connect
from welcome_mailer.ledger.engine import url_from_connection
from welcome_mailer.ledger.migrate import check_at_head
from welcome_mailer.settings import Settings

LEDGER_CONN_ID = "contacts_db"


class LedgerHook(BaseHook):
    """The contacts ledger. Uses a connection of type ``postgres`` (host, port, login, password, schema =
    database; libpq parameters such as ``sslmode`` in the extra) or ``sqlite`` (host = the file's path).
    It registers no connection type of its own: both belong to their providers."""

    conn_name_attr = "ledger_conn_id"
    default_conn_name = LEDGER_CONN_ID
    hook_name = "Welcome mailer ledger"

    def __init__(self, ledger_conn_id: str = LEDGER_CONN_ID) -> None:
        super().__init__()
        self.ledger_conn_id = ledger_conn_id

    def sqlalchemy_url(self) -> URL:
        conn = self.get_connection(self.ledger_conn_id)
        try:
            return url_from_connection(conn)
        except ValueError as exc:
            raise ValueError(f"connection {self.ledger_conn_id!r}: {exc}") from None

    def get_engine(self) -> Engine:
        return _engine(self.sqlalchemy_url())

    def get_conn(self) -> Ledger:
        """The ledger, after checking its schema is the one this code needs (tasks never migrate it)."""
        engine = self.get_engine()
        _check_schema_once(engine)
        return Ledger(engine, lease=Settings.from_env().lease)

    def test_connection(self) -> tuple[bool, str]:
        try:
            engine = self.get_engine()
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            check_at_head(engine)
        except Exception as exc:  # the message is the answer the UI shows
            return False, str(exc)
        return True, "Connection successfully tested: the ledger's schema is up to date"


@cache
def _engine(url: URL) -> Engine:
    return connect(url)


@cache
def _check_schema_once(engine: Engine) -> None:
    check_at_head(engine)  # raises, so a failed check is not cached
