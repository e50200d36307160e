"""Alembic environment for the ledger. Run through ``welcome_mailer.ledger.migrate`` (``welcome-mailer db
migrate``), which passes an open connection; the version table is the package's own, so the ledger can
share a database with anything else that uses Alembic (Airflow's metadata DB included)."""

from __future__ import annotations

from alembic import context

from welcome_mailer.ledger.migrate import VERSION_TABLE, target_metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=target_metadata(),
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
    transaction_per_migration=True,
)
with context.begin_transaction():
    context.run_migrations()
