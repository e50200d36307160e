"""``welcome-mailer``: the package's command line.

    welcome-mailer db migrate [--conn-id contacts_db | --url URL]   bring the ledger's schema to head
    welcome-mailer db check   [...]                                 exit 1 unless the schema is at head
    welcome-mailer db current [...]                                 print the schema's revision
    welcome-mailer db downgrade --to REVISION [...]                 back to an earlier revision (a rollback)
    welcome-mailer contact lookup EMAIL [--json]                    state, source, attempts, audit trail
    welcome-mailer contact suppress|erase|release EMAIL --reason WHY   an operator action, audited
    welcome-mailer suppressions import FILE --reason WHY            suppress every address of a CSV
    welcome-mailer template list                                    the templates (folder and built-in)
    welcome-mailer template preview NAME [--file CSV --line N | --name X --email Y]   render it
    welcome-mailer template test-send NAME --to ADDRESS [...]       one rendered message, audited

The ledger is the ``contacts_db`` Airflow connection (any secrets backend, e.g. AIRFLOW_CONN_CONTACTS_DB),
or a SQLAlchemy URL given with --url. Contact commands call the same functions as the UI's pages
(``welcome_mailer.operator_actions``) and record the operating-system user as the actor ("cli:<user>").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from sqlalchemy import Engine


def _engine(args: argparse.Namespace) -> Engine:
    from welcome_mailer.ledger import connect

    if args.url:
        return connect(args.url)
    from welcome_mailer.hooks.ledger import LedgerHook

    return LedgerHook(args.conn_id).get_engine()


def _db(args: argparse.Namespace) -> int:
    from welcome_mailer.ledger.migrate import (
        LedgerSchemaError,
        check_at_head,
        current_revision,
        downgrade,
        upgrade,
    )

    engine = _engine(args)
    where = engine.url.render_as_string(hide_password=True)
    if args.action == "migrate":
        before, after = upgrade(engine)
        print(f"ledger {where}: {'already at' if before == after else f'migrated from {before} to'} {after}")
    elif args.action == "downgrade":
        if not args.to:
            print("db downgrade needs --to REVISION (see `welcome-mailer db current`)", file=sys.stderr)
            return 2
        try:
            before, after = downgrade(engine, args.to)
        except LedgerSchemaError as exc:
            print(f"ledger {where}: {exc}", file=sys.stderr)
            return 2
        print(f"ledger {where}: {'already at' if before == after else f'downgraded from {before} to'} {after}")
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


def _ledger(args: argparse.Namespace):
    from welcome_mailer.ledger import Ledger
    from welcome_mailer.ledger.migrate import check_at_head
    from welcome_mailer.settings import Settings

    engine = _engine(args)
    check_at_head(engine)
    settings = Settings.from_env()
    return Ledger(engine, lease=settings.lease, erase_key=settings.erase_key), settings


def _actor() -> str:
    import getpass

    return f"cli:{getpass.getuser()}"


def _contact(args: argparse.Namespace) -> int:
    from welcome_mailer import operator_actions

    ledger, settings = _ledger(args)
    try:
        if args.action == "lookup":
            view = operator_actions.lookup(ledger, args.email, settings.data_roots)
            print(json.dumps(dataclasses.asdict(view), default=str, indent=2) if args.json else _describe(view))
            return 0 if view.status or view.erased_at else 3
        if not args.reason:
            print(f"contact {args.action} needs --reason (recorded in the audit trail)", file=sys.stderr)
            return 2
        if args.action == "suppress":
            counts = operator_actions.suppress(ledger, [args.email], _actor(), args.reason)
            print(f"{args.email}: " + ("suppressed" if counts["suppressed"] else _not_suppressed(counts)))
        elif args.action == "release":
            released = operator_actions.release(ledger, args.email, _actor(), args.reason)
            print(
                f"{args.email}: "
                + ("released: the next run that lists it retries it" if released else "not failed: nothing to release")
            )
            return 0 if released else 1
        else:
            removed = operator_actions.erase(
                ledger, args.email, _actor(), args.reason, operator_actions.kept_files(settings)
            )
            print(f"erased; removed: {', '.join(f'{k} {v}' for k, v in removed.items())}")
    except (operator_actions.InvalidEmail, operator_actions.EraseKeyMissing, ValueError) as exc:
        print(f"{args.email}: {exc}", file=sys.stderr)
        return 2
    return 0


def _not_suppressed(counts: dict) -> str:
    return "already erased (never emailed)" if counts["erased"] else "already suppressed"


def _describe(view) -> str:
    if view.erased_at and not view.status:
        lines = [f"{view.email}: erased at {view.erased_at} UTC (never emailed again)"]
    elif not view.status:
        return f"{view.email}: not in the ledger"
    else:
        source = f"{view.source_file or '(file unknown)'}, line {view.source_line}" if view.source_line else "unknown"
        lines = [
            f"{view.email}: {view.status}" + (" (released: due at once)" if view.released else ""),
            f"  name: {view.name}",
            f"  run: {view.run_id}",
            f"  source: {source}",
            f"  attempts: {view.attempts}",
        ]
        for a in view.history:
            lines.append(
                f"    #{a['attempt']} {a['created_at']} {a['status']} key={a['idempotency_key']} "
                f"message={a['provider_message_id'] or '-'} run={a['run_id']} "
                f"template={a['template'] or 'welcome'}@{(a['template_hash'] or 'built-in')[:12]}"
                + (f" error={a['error']}" if a["error"] else "")
            )
    for action in view.actions:
        lines.append(f"  {action['at']} {action['action']} by {action['actor']}: {action['reason']}")
    return "\n".join(lines)


def _suppressions(args: argparse.Namespace) -> int:
    from welcome_mailer import operator_actions

    ledger, _ = _ledger(args)
    with open(args.file, newline="", encoding="utf-8-sig") as handle:
        try:
            counts = operator_actions.import_suppressions(ledger, handle, _actor(), args.reason, source=args.file)
        except (operator_actions.EraseKeyMissing, ValueError) as exc:
            print(exc, file=sys.stderr)
            return 2
    print(", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def _template(args: argparse.Namespace) -> int:
    from welcome_mailer import template_tools
    from welcome_mailer.settings import Settings
    from welcome_mailer.storage import location
    from welcome_mailer.templates import (
        RefusedMessage,
        TemplateError,
        compile_template,
        list_templates,
        load_template,
    )
    from welcome_mailer.unsubscribe import UnsubscribeSettings

    settings = Settings.from_env()
    folder = location(args.folder or settings.templates_dir, settings.storage_conn_id)  # a directory or a URI
    if args.action == "list":
        for source in list_templates(folder):
            parts = "subject, text" + (", html" if source.html is not None else "")
            print(f"{source.name}\t{source.version}\t{parts}\t{source.origin}")
        return 0
    if not args.name:
        print(f"template {args.action} needs a template NAME (see `welcome-mailer template list`)", file=sys.stderr)
        return 2
    try:
        source = load_template(args.name, folder)
        unsubscribe = UnsubscribeSettings.from_env()
        compiled = compile_template(source, unsubscribe)
        contact = (
            template_tools.contact_at(args.file, args.line, compiled)
            if args.file
            else template_tools.sample_contact(compiled, args.contact_name, args.contact_email)
        )
        if args.action == "preview":
            shown = template_tools.preview(source, contact, unsubscribe)
            if shown.refused:
                print(f"{contact.email}: rejected at parse: {shown.refused}", file=sys.stderr)
                return 1
            print(f"Template: {source.name} (version {source.version})\nTo: {contact.email}\nSubject: {shown.subject}")
            print(f"\n{shown.text}")
            if shown.html is not None:
                print(f"\n--- HTML ---\n{shown.html}")
            return 0
        if not args.to:
            print("template test-send needs --to ADDRESS (your own)", file=sys.stderr)
            return 2
        ledger, _ = _ledger(args)
        from welcome_mailer.hooks.esp import EspHook

        with EspHook().get_conn() as transport:
            sent = template_tools.test_send(ledger, transport, source, contact, args.to, _actor(), unsubscribe)
    except (TemplateError, RefusedMessage, LookupError, template_tools.InvalidEmail, OSError) as exc:
        print(exc, file=sys.stderr)
        return 2
    if sent["provider_message_id"] is None:
        print(f"test send to {sent['to']} refused: {sent['error']}", file=sys.stderr)
        return 1
    print(f"test send to {sent['to']}: accepted as {sent['provider_message_id']} (recorded in the audit trail)")
    return 0


def _ledger_options(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--conn-id", default="contacts_db", help="Airflow connection of the ledger")
    source.add_argument("--url", help="SQLAlchemy URL of the ledger, instead of a connection")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="welcome-mailer", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    db = commands.add_parser("db", help="the ledger's schema (Alembic migrations)")
    db.add_argument("action", choices=("migrate", "check", "current", "downgrade"))
    db.add_argument("--to", metavar="REVISION", help="downgrade: the revision to go back to")
    _ledger_options(db)
    db.set_defaults(run=_db)
    contact = commands.add_parser("contact", help="one contact: look it up, suppress, erase (GDPR) or release it")
    contact.add_argument("action", choices=("lookup", "suppress", "erase", "release"))
    contact.add_argument("email")
    contact.add_argument("--reason", help="why (required for actions; recorded in the audit trail)")
    contact.add_argument("--json", action="store_true", help="lookup: print JSON")
    _ledger_options(contact)
    contact.set_defaults(run=_contact)
    suppressions = commands.add_parser("suppressions", help="suppression lists")
    suppressions.add_argument("action", choices=("import",))
    suppressions.add_argument("file", help="CSV of addresses: a column named email, or the first field with an @")
    suppressions.add_argument("--reason", required=True, help="why (recorded in the audit trail)")
    _ledger_options(suppressions)
    suppressions.set_defaults(run=_suppressions)
    template = commands.add_parser("template", help="the welcome email's templates: list, preview, test send")
    template.add_argument("action", choices=("list", "preview", "test-send"))
    template.add_argument("name", nargs="?", help="the template (a directory of the templates folder, or welcome)")
    template.add_argument("--folder", help="the templates folder (default: WELCOME_MAILER_TEMPLATES_DIR)")
    template.add_argument("--file", help="render for a row of this contact file ...")
    template.add_argument("--line", type=int, default=1, help="... at this line (default 1)")
    template.add_argument("--name", dest="contact_name", help="or for these values (default: sample values)")
    template.add_argument("--email", dest="contact_email")
    template.add_argument("--to", help="test-send: the address to send the test to")
    _ledger_options(template)
    template.set_defaults(run=_template)
    args = parser.parse_args(argv)
    if args.command == "db":
        return args.run(args)
    from sqlalchemy.exc import OperationalError

    from welcome_mailer.ledger.migrate import LedgerSchemaError

    try:
        return args.run(args)
    except (LedgerSchemaError, OperationalError) as exc:  # no ledger there, or not migrated: say so plainly
        print(f"the ledger cannot be used: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
