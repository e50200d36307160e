"""What an operator asks of the ledger, from the UI (``welcome_mailer.web.ui``) or the command line
(``welcome-mailer contact ...``): both call these functions, so both behave the same.

- Questions: ``lookup`` (one contact: state, owning run, source file and line, every attempt, the audit
  trail), ``overview`` (contacts per state, messages per day, the latest runs), ``run_view`` (a run's
  report and rejected rows) and ``run_outcomes_csv`` (every contact of a run, streamed).
- Actions, each audited (who, when, what, why): ``suppress``, ``import_suppressions``, ``erase`` (GDPR
  art. 17: the address and name leave every table and file the package keeps) and ``release``.

Addresses are normalised as the parser does (``welcome_mailer.contacts.normalise_email``).
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import func, or_, select, text

from welcome_mailer.contacts import InvalidEmail, normalise_email
from welcome_mailer.ledger import Ledger
from welcome_mailer.ledger.bulk import is_postgres
from welcome_mailer.ledger.queries import shown_status, with_latest_attempt
from welcome_mailer.ledger.rules import RELEASED_AT, SENDING, EraseKeyMissing, erased_hash
from welcome_mailer.ledger.schema import (
    erased_contacts,
    ledger_runs,
    operator_actions,
    run_templates,
    send_attempts,
    sent_contacts,
)
from welcome_mailer.run_files import REJECTED_CSV, REPORT_JSON, run_directory, shown_path
from welcome_mailer.settings import Settings
from welcome_mailer.vocabulary import utcnow

__all__ = [
    "ContactView",
    "EraseKeyMissing",
    "InvalidEmail",
    "erase",
    "import_suppressions",
    "kept_files",
    "lookup",
    "overview",
    "release",
    "run_outcomes_csv",
    "run_view",
    "suppress",
]

REJECTED_ROWS_SHOWN = 200
CSV_FETCH_ROWS = 5000  # rows per fetch while streaming a run's outcomes
# The states the overview always lists, in this order; others (added by other features) follow.
STATE_ORDER = (
    "delivered", "bounced", "complained", "unsubscribed", "suppressed", "failed", "unconfirmed",
    "blocked", "sent", "sending", "claimed",
)  # fmt: skip
IN_FLIGHT = ("claimed", "sending", "sent", "blocked")


@dataclass
class ContactView:
    email: str
    erased_at: datetime | None = None  # erased: nothing else is known
    name: str | None = None
    status: str | None = None  # None: never seen (and not erased)
    run_id: str | None = None
    attempts: int = 0
    updated_at: datetime | None = None
    released: bool = False
    source_file: str | None = None
    source_line: int | None = None
    history: list[dict] = field(default_factory=list)  # every attempt, oldest first
    actions: list[dict] = field(default_factory=list)  # the audit trail, newest first


def _audit(actor: str, action: str, reason: str, detail: str | None = None) -> dict:
    if not reason or not reason.strip():
        raise ValueError("say why: every operator action records a reason")
    return {"actor": actor, "action": action, "reason": reason.strip()[:2000], "detail": detail}


# -- questions ---------------------------------------------------------------------------------------
def lookup(ledger: Ledger, raw_email: str, data_roots: Sequence[Path] = ()) -> ContactView:
    """Everything the ledger knows about one address. Raises InvalidEmail."""
    email = normalise_email(raw_email)
    view = ContactView(email)
    digest = erased_hash(ledger.erase_key, email) if ledger.erase_key else None
    with ledger.engine.connect() as conn:
        if digest:
            view.erased_at = conn.execute(
                select(erased_contacts.c.erased_at).where(erased_contacts.c.email_hash == digest)
            ).scalar()
        row = conn.execute(
            select(sent_contacts, shown_status().label("shown_status"), ledger_runs.c.source_file)
            .select_from(with_latest_attempt().outerjoin(ledger_runs, ledger_runs.c.run_id == sent_contacts.c.run_id))
            .where(sent_contacts.c.email == email)
        ).first()
        if row is not None:
            view.name, view.status, view.run_id, view.attempts = row.name, row.shown_status, row.run_id, row.attempts
            view.updated_at, view.released = row.updated_at, row.updated_at == RELEASED_AT
            view.source_line = row.source_line
            view.source_file = shown_path(row.source_file, data_roots)
        # Each attempt's template is its run's snapshot (ledger/schema.py says why); none: the built-in text.
        rendered_from = send_attempts.outerjoin(run_templates, run_templates.c.run_id == send_attempts.c.run_id)
        view.history = [
            dict(r._mapping)
            for r in conn.execute(
                select(
                    send_attempts, run_templates.c.name.label("template"), run_templates.c.hash.label("template_hash")
                )
                .select_from(rendered_from)
                .where(send_attempts.c.email == email)
                .order_by(send_attempts.c.attempt)
            )
        ]
        whose = operator_actions.c.email == email
        if digest:
            whose = or_(whose, operator_actions.c.email_hash == digest)
        view.actions = [
            dict(r._mapping)
            for r in conn.execute(select(operator_actions).where(whose).order_by(operator_actions.c.id.desc()))
        ]
    return view


def overview(
    ledger: Ledger, reports_dir: Path, data_roots: Sequence[Path] = (), days: int = 14, runs: int = 15
) -> dict:
    """Contacts per state, messages sent per day over the last ``days`` days, the latest runs."""
    since = (utcnow() - timedelta(days=days - 1)).replace(hour=0, minute=0, second=0, microsecond=0)
    with ledger.engine.connect() as conn:
        if is_postgres(conn):
            # Counting millions of index entries looks costly enough for JIT compilation, which then costs
            # more than the count itself (docs/performance.md, make bench-ui). For this transaction only.
            conn.execute(text("SET LOCAL jit = off"))
        states = dict(conn.execute(select(sent_contacts.c.status, func.count()).group_by(sent_contacts.c.status)).all())
        if states.get(SENDING):  # split as shown: not accepted yet / sent (few, but for runs in progress)
            states.pop(SENDING)
            shown = shown_status()
            states.update(
                conn.execute(
                    select(shown, func.count())
                    .select_from(with_latest_attempt())
                    .where(sent_contacts.c.status == SENDING)
                    .group_by(shown)
                ).all()
            )
        day = func.date(send_attempts.c.created_at)
        per_day = conn.execute(
            select(day, func.count()).where(send_attempts.c.created_at >= since).group_by(day).order_by(day)
        ).all()
        erased = conn.execute(select(func.count()).select_from(erased_contacts)).scalar_one()
        latest = conn.execute(
            select(ledger_runs).order_by(ledger_runs.c.created_at.desc(), ledger_runs.c.run_id).limit(runs)
        ).all()
    ordered = [s for s in STATE_ORDER if s in states] + sorted(set(states) - set(STATE_ORDER))
    return {
        "states": [(s, states[s]) for s in ordered],
        "in_flight": sum(states.get(s, 0) for s in IN_FLIGHT),
        "erased": erased,
        "total": sum(states.values()),
        "per_day": [(str(d), n) for d, n in per_day],
        "runs": [_run_line(r, _report(reports_dir, r.run_id), data_roots) for r in latest],
    }


def run_view(reports_dir: Path, run_id: str) -> dict:
    """A run's report (report.json, as report.md shows it) and its first rejected rows."""
    report = _report(reports_dir, run_id)
    rejected, more = [], False
    path = run_directory(reports_dir, run_id) / REJECTED_CSV
    if path.is_file():
        with path.open(newline="", encoding="utf-8") as handle:
            for n, row in enumerate(csv.reader(handle)):
                if n == 0 and row[:1] == ["line_no"]:  # the header
                    continue
                if len(rejected) == REJECTED_ROWS_SHOWN:
                    more = True
                    break
                rejected.append(row)
    return {"run_id": run_id, "report": report, "rejected": rejected, "more_rejected": more}


def run_outcomes_csv(ledger: Ledger, run_id: str) -> Iterator[str]:
    """Every contact the run owns, with its outcome, as CSV text in pieces: fetched from a server-side
    cursor in slices of CSV_FETCH_ROWS, so a 1M-contact run never sits in memory."""
    columns = ("email", "name", "status", "attempts", "provider_message_id", "source_line", "updated_at")
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    yield buffer.getvalue()
    query = (
        select(
            sent_contacts.c.email,
            sent_contacts.c.name,
            shown_status(),
            sent_contacts.c.attempts,
            send_attempts.c.provider_message_id,  # the latest attempt's
            sent_contacts.c.source_line,
            sent_contacts.c.updated_at,
        )
        .select_from(with_latest_attempt())
        .where(sent_contacts.c.run_id == run_id)
        .order_by(sent_contacts.c.run_id, sent_contacts.c.status)
    )
    with ledger.engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=CSV_FETCH_ROWS).execute(query)
        for rows in result.partitions():
            buffer.seek(0)
            buffer.truncate()
            writer.writerows(rows)
            yield buffer.getvalue()


def _run_line(run, report: dict | None, data_roots: Sequence[Path]) -> dict:
    file = shown_path(run.source_file, data_roots)
    return {
        "run_id": run.run_id,
        "started": run.created_at,
        "finished": run.finished_at,
        "report": report,
        "file": file,
    }


def _report(reports_dir: Path, run_id: str) -> dict | None:
    path = run_directory(reports_dir, run_id) / REPORT_JSON
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# -- actions -----------------------------------------------------------------------------------------
def suppress(ledger: Ledger, raw_emails: Iterable[str], actor: str, reason: str, detail: str | None = None) -> dict:
    """Never email these addresses. Returns counts: suppressed (changed), already (suppressed before),
    erased (already erased: left alone, so their address is not written back), invalid."""
    emails, invalid = set(), 0
    for raw in raw_emails:
        try:
            emails.add(normalise_email(raw))
        except InvalidEmail:
            invalid += 1
    erased = _erased_among(ledger, emails)
    emails -= erased
    changed = ledger.suppress(sorted(emails), _audit(actor, "suppress", reason, detail)) if emails else 0
    return {"suppressed": changed, "already": len(emails) - changed, "erased": len(erased), "invalid": invalid}


def import_suppressions(ledger: Ledger, lines: Iterable[str], actor: str, reason: str, source: str) -> dict:
    """Suppress every address of a CSV (unsubscribes or complaints from another system): the column named
    email, or else the first field of each row that contains an @. Blank lines are skipped."""
    reader = csv.reader(lines)
    column = None
    addresses = []
    for n, row in enumerate(reader):
        cells = [c.strip() for c in row]
        if n == 0:
            lowered = [c.lower() for c in cells]
            for name in ("email", "e-mail", "email address", "address"):
                if name in lowered:
                    column = lowered.index(name)
                    break
            if column is not None:
                continue
        if not any(cells):
            continue
        if column is not None:
            addresses.append(cells[column] if column < len(cells) else "")
        else:
            addresses.append(next((c for c in cells if "@" in c), cells[0]))
    return suppress(ledger, addresses, actor, reason, detail=f"imported from {source}")


def release(ledger: Ledger, raw_email: str, actor: str, reason: str) -> bool:
    """A failed contact is retried by the next run that lists it. False: it is not failed."""
    return ledger.release(normalise_email(raw_email), _audit(actor, "release", reason))


def erase(ledger: Ledger, raw_email: str, actor: str, reason: str, files_under: Iterable[Path]) -> dict:
    """GDPR art. 17. The address and name leave every ledger table (the keyed hash keeps the contact
    deduplicated and never emailed) and every line of the package's files that holds the address:
    each run's rejected.csv, and files kept in ``files_under`` (the reports and the drop folder's
    archive and failed folders). Returns what was removed."""
    email = normalise_email(raw_email)
    removed = ledger.erase(email, _audit(actor, "erase", reason))
    lines = 0
    for root in files_under:
        if root.is_dir():
            for path in sorted(root.rglob("*")):
                if path.is_file() and path.suffix.lower() in (".csv", ".txt", ".md", ".json"):
                    lines += _scrub_file(path, email)
    removed["file lines"] = lines
    return removed


def kept_files(settings: Settings) -> list[Path]:
    """The folders of files the package writes or keeps: erase scrubs them."""
    return [settings.reports_dir, settings.dropzone / "archive", settings.dropzone / "failed"]


def _scrub_file(path: Path, email: str) -> int:
    """Rewrite a text file without its lines that hold the address (any case); atomically."""
    with path.open(encoding="utf-8", errors="surrogateescape", newline="") as handle:
        if not any(email in line.lower() for line in handle):
            return 0
        handle.seek(0)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".erase")
        dropped = 0
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape", newline="") as out:
            for line in handle:
                if email in line.lower():
                    dropped += 1
                else:
                    out.write(line)
    os.chmod(tmp, path.stat().st_mode & 0o777)
    os.replace(tmp, path)
    return dropped


def _erased_among(ledger: Ledger, emails: set[str]) -> set[str]:
    with ledger.engine.connect() as conn:
        if not conn.execute(select(func.count()).select_from(erased_contacts)).scalar_one():
            return set()
        if ledger.erase_key is None:
            raise EraseKeyMissing("the ledger holds erased contacts: set WELCOME_MAILER_ERASE_KEY to act on addresses")
        hashes = {erased_hash(ledger.erase_key, e): e for e in emails}
        found = set()
        keys = list(hashes)
        for start in range(0, len(keys), 1000):
            found.update(
                conn.execute(
                    select(erased_contacts.c.email_hash).where(
                        erased_contacts.c.email_hash.in_(keys[start : start + 1000])
                    )
                ).scalars()
            )
    return {hashes[h] for h in found}
