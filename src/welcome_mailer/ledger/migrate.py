"""The ledger's schema versions, managed by Alembic (the migration tool Airflow itself uses).

- ``upgrade(engine)`` brings a ledger to the newest revision: what ``welcome-mailer db migrate`` runs, and
  with it ``make run``, ``make stack-up`` and docker-compose's init. A ledger made by the versions before
  Alembic (a ``ledger_schema`` table holding 1) is stamped as the baseline revision first, data kept.
- ``downgrade(engine, revision)`` takes it back to an earlier revision, for rolling back to an older
  release of the package: ``welcome-mailer db downgrade --to REVISION``.
- ``check_at_head(engine)`` is what tasks call: they never change the schema, they say what to run.

Alembic is imported only to change a schema: every task checks it, and a ledger already at head (every
``make run`` but the first) is checked with one query, not by loading Alembic and the revision scripts.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, MetaData, inspect, text

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

VERSION_TABLE = "welcome_mailer_alembic_version"
BASELINE = "0001"  # the schema as the versions before Alembic left it (ledger_schema version 1)
# The newest revision in migrations/versions, which this code is written for. A new revision raises it;
# tests/integration/test_migrations.py holds it to Alembic's own answer (ScriptDirectory's head).
HEAD_REVISION = "0015"
MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
POSTGRES_MIGRATION_LOCK = 7410001  # one migrator at a time per database


class LedgerSchemaError(RuntimeError):
    """The ledger's schema is not the one this code needs; the message says what to run."""


def target_metadata() -> MetaData:
    """Every table of the package, as the code expects them at head."""
    from welcome_mailer.ledger.schema import metadata

    return metadata


def _config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def revision_scripts() -> ScriptDirectory:
    """Alembic's view of the revision scripts (it loads every one)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config())


def current_revision(engine: Engine) -> str | None:
    """The ledger's revision, read from Alembic's version table (None: no welcome-mailer schema yet)."""
    with engine.connect() as conn:
        if not inspect(conn).has_table(VERSION_TABLE):
            return None
        versions = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    if len(versions) > 1:  # Alembic's own check: one line of history, one head
        raise LedgerSchemaError(f"the ledger's {VERSION_TABLE} names several revisions: {', '.join(versions)}")
    return versions[0] if versions else None


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str]:
    """Migrate the ledger to ``revision``; returns (revision before, revision after)."""
    if revision in ("head", HEAD_REVISION) and current_revision(engine) == HEAD_REVISION:
        return HEAD_REVISION, HEAD_REVISION  # nothing to do, so nothing of Alembic's to load

    def migrate(config: Config, conn, before: str | None) -> None:
        from alembic import command

        if before is None and _is_pre_alembic_v1(conn):
            command.stamp(config, BASELINE)
        command.upgrade(config, revision)

    return _migrate(engine, migrate)


def downgrade(engine: Engine, revision: str) -> tuple[str | None, str | None]:
    """Take the ledger back to ``revision`` (an earlier one; "base" drops every table); returns (revision
    before, revision after). Data in what a later revision added is lost."""
    from alembic import command

    scripts = revision_scripts()
    known = {r.revision for r in scripts.walk_revisions()}
    if revision != "base" and revision not in known:
        raise LedgerSchemaError(f"no ledger revision {revision!r}: the revisions are {', '.join(sorted(known))}")

    def migrate(config: Config, conn, before: str | None) -> None:
        if before is not None and revision != "base" and revision not in _at_or_below(scripts, before):
            raise LedgerSchemaError(f"the ledger is at revision {before}: {revision} is not below it")
        command.downgrade(config, revision)

    return _migrate(engine, migrate)


def _at_or_below(scripts: ScriptDirectory, revision: str) -> set[str]:
    return {r.revision for r in scripts.iterate_revisions(revision, "base")}


def _migrate(engine: Engine, migrate) -> tuple[str | None, str | None]:
    """Run ``migrate(config, conn, revision before)`` in one transaction, one migrator at a time."""
    from alembic.runtime.migration import MigrationContext

    config = _config()
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":  # concurrent migrators wait, then find nothing to do
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": POSTGRES_MIGRATION_LOCK})
        before = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()
        config.attributes["connection"] = conn
        migrate(config, conn, before)
        after = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()
    return before, after


def check_at_head(engine: Engine) -> None:
    """Raise LedgerSchemaError unless the ledger is at the revision this code was written for."""
    current, head = current_revision(engine), HEAD_REVISION
    if current == head:
        return
    where = engine.url.render_as_string(hide_password=True)
    state = "has no welcome-mailer schema yet" if current is None else f"is at revision {current}"
    raise LedgerSchemaError(
        f"the ledger at {where} {state}, this code needs revision {head}: run `welcome-mailer db migrate` "
        "(make run and make stack-up do it; in docker-compose, airflow-init does)"
    )


def _is_pre_alembic_v1(conn) -> bool:
    inspector = inspect(conn)
    if not inspector.has_table("ledger_schema"):
        return False
    version = conn.execute(text("SELECT max(version) FROM ledger_schema")).scalar()
    if version != 1:
        raise LedgerSchemaError(f"unknown pre-Alembic ledger schema version {version!r}; expected 1")
    return True
