"""``welcome-mailer``: the package's command line.

    welcome-mailer db migrate [--conn-id contacts_db | --url URL]   bring the ledger's schema to head
    welcome-mailer db check   [...]                                 exit 1 unless the schema is at head
    welcome-mailer db current [...]                                 print the schema's revision

The ledger is the ``contacts_db`` Airflow connection (any secrets backend, e.g. AIRFLOW_CONN_CONTACTS_DB),
or a SQLAlchemy URL given with --url.
"""

from __future__ import annotations

import argparse
import sys

from sqlalchemy import Engine


def _engine(args: argparse.Namespace) -> Engine:
    from welcome_mailer.ledger import connect

    if args.url:
        return connect(args.url)
    from welcome_mailer.hooks.ledger import LedgerHook

    return LedgerHook(args.conn_id).get_engine()


def _db(args: argparse.Namespace) -> int:
    from welcome_mailer.ledger.migrate import LedgerSchemaError, check_at_head, current_revision, upgrade

    engine = _engine(args)
    where = engine.url.render_as_string(hide_password=True)
    if args.action == "migrate":
        before, after = upgrade(engine)
        print(f"ledger {where}: {'already at' if before == after else f'migrated from {before} to'} {after}")
    elif args.action == "current":
        print(current_revision(engine) or "none")
    else:
        try:
            check_at_head(engine)
        except LedgerSchemaError as exc:
            print(exc, file=sys.stderr)
            return 1
        print(f"ledger {where}: schema at head")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="welcome-mailer", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    db = commands.add_parser("db", help="the ledger's schema (Alembic migrations)")
    db.add_argument("action", choices=("migrate", "check", "current"))
    source = db.add_mutually_exclusive_group()
    source.add_argument("--conn-id", default="contacts_db", help="Airflow connection of the ledger")
    source.add_argument("--url", help="SQLAlchemy URL of the ledger, instead of a connection")
    db.set_defaults(run=_db)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
