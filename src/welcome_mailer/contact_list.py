"""The operator's list of contacts (the ledger page's "Contacts"), and the questions around it: is this a
run of the DAG, one page of the filtered list, the whole filtered list as CSV, bulk actions on a selection.

Pages are found by keyset, never OFFSET: the list is sorted by last change, then address, and the next
page starts after the last row's (updated_at, email), so the thousandth page of a 10M-contact ledger
costs what the first does. Indexes on (updated_at, email), (status, updated_at, email) and (run_id,
updated_at, email) (migration 0012) serve the sort alone, by state and by run (``make bench-ui``).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path

from sqlalchemy import func, or_, select, text, tuple_
from sqlalchemy.exc import OperationalError

from welcome_mailer.ledger import Ledger
from welcome_mailer.ledger.bulk import is_postgres
from welcome_mailer.ledger.queries import shown_status, with_latest_attempt
from welcome_mailer.ledger.rules import SENDING, SENT
from welcome_mailer.ledger.schema import ledger_runs, operator_actions, sent_contacts
from welcome_mailer.run_files import shown_path

PAGE_SIZE = 50
SEARCH_MAX = 200  # characters of a search kept (an address is at most 320, but nobody types that)
EXPORT_FETCH_ROWS = 5000
SEARCH_TIMEOUT_MS = 5000  # Postgres: a search's page gives up after this long
QUERY_CANCELED = "57014"  # Postgres' SQLSTATE for a statement cancelled by statement_timeout


class SearchTooBroad(ValueError):
    """A search that would scan too much of a large ledger; the message says how to narrow it."""


EXPORT_COLUMNS = ("email", "name", "state", "run_id", "attempts", "source_line", "last_change_utc")


def run_exists(ledger: Ledger, run_id: str) -> bool:
    """A run of the DAG that the ledger knows (``ledger_runs``): the only ids whose report folder the pages
    read. ``.`` and ``..`` never are (they would name a folder that is not a run's)."""
    if run_id in (".", "..") or not run_id:
        return False
    with ledger.engine.connect() as conn:
        return conn.execute(select(ledger_runs.c.run_id).where(ledger_runs.c.run_id == run_id)).first() is not None


@dataclass(frozen=True)
class ContactFilter:
    """What the list shows: every field optional. ``runs`` is the runs a source file was read by (the
    caller resolves a file to its runs); ``newest_first`` sorts by last change, newest or oldest first."""

    state: str = ""
    run_id: str = ""
    runs: tuple[str, ...] | None = None
    changed_from: date | None = None
    changed_to: date | None = None  # inclusive
    search: str = ""
    newest_first: bool = True

    def where(self) -> list:
        conditions = []
        if self.state in (SENT, SENDING):  # one stored state, shown as two (welcome_mailer.ledger.rules)
            conditions += [sent_contacts.c.status == SENDING, shown_status() == self.state]
        elif self.state:
            conditions.append(sent_contacts.c.status == self.state)
        if self.run_id:
            conditions.append(sent_contacts.c.run_id == self.run_id)
        if self.runs is not None:
            conditions.append(sent_contacts.c.run_id.in_(self.runs))
        if self.changed_from:
            conditions.append(sent_contacts.c.updated_at >= datetime.combine(self.changed_from, time()))
        if self.changed_to:
            conditions.append(sent_contacts.c.updated_at < datetime.combine(self.changed_to + timedelta(1), time()))
        if self.search.strip():
            pattern = "%" + _escape_like(self.search.strip().lower()[:SEARCH_MAX]) + "%"
            conditions.append(
                or_(
                    sent_contacts.c.email.like(pattern, escape="\\"),
                    func.lower(sent_contacts.c.name).like(pattern, escape="\\"),
                )
            )
        return conditions


@dataclass
class ContactPage:
    rows: list[dict]
    next_after: str | None  # the keyset of the next page ("<updated_at iso>|<email>"), None: last page


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _query(filters: ContactFilter):
    order = (sent_contacts.c.updated_at, sent_contacts.c.email)
    return (
        select(
            sent_contacts.c.email,
            sent_contacts.c.name,
            shown_status().label("state"),
            sent_contacts.c.run_id,
            sent_contacts.c.attempts,
            sent_contacts.c.source_line,
            sent_contacts.c.updated_at,
        )
        .select_from(with_latest_attempt())
        .where(*filters.where())
        .order_by(*(c.desc() if filters.newest_first else c.asc() for c in order))
    )


def parse_after(after: str) -> tuple[datetime, str] | None:
    """A page's keyset as the next-page link carries it; None if it is not one (the list starts over)."""
    stamp, sep, email = after.partition("|")
    try:
        return (datetime.fromisoformat(stamp), email) if sep else None
    except ValueError:
        return None


def page(ledger: Ledger, filters: ContactFilter, after: str = "", size: int = PAGE_SIZE) -> ContactPage:
    """One page of the filtered list, after the keyset ``after`` (empty: the first page)."""
    query = _query(filters).limit(size + 1)
    keyset = parse_after(after)
    if keyset:
        position = tuple_(sent_contacts.c.updated_at, sent_contacts.c.email)
        query = query.where(position < tuple_(*keyset) if filters.newest_first else position > tuple_(*keyset))
    with ledger.engine.connect() as conn:
        if filters.search.strip() and is_postgres(conn):
            # A search is a scan of the contacts the other filters leave (no index serves "contains"):
            # on a large ledger, bounded, and the page asks for a narrower one.
            conn.execute(text(f"SET LOCAL statement_timeout = {SEARCH_TIMEOUT_MS}"))
        try:
            rows = [dict(r._mapping) for r in conn.execute(query)]
        except OperationalError as exc:
            if QUERY_CANCELED in (getattr(exc.orig, "sqlstate", None), getattr(exc.orig, "pgcode", None)):
                raise SearchTooBroad(
                    f"the search took more than {SEARCH_TIMEOUT_MS // 1000} s: narrow it with a state, a run "
                    "or last-change dates, or search a longer part of the address"
                ) from None
            raise
    more = len(rows) > size
    rows = rows[:size]
    next_after = f"{rows[-1]['updated_at'].isoformat()}|{rows[-1]['email']}" if more else None
    return ContactPage(rows, next_after)


def export_csv(ledger: Ledger, filters: ContactFilter) -> Iterator[str]:
    """The whole filtered list as CSV text in pieces, from a server-side cursor (a 10M-row export never
    sits in memory). Times in UTC, ISO 8601."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(EXPORT_COLUMNS)
    yield buffer.getvalue()
    with ledger.engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=EXPORT_FETCH_ROWS).execute(_query(filters))
        for rows in result.partitions():
            buffer.seek(0)
            buffer.truncate()
            writer.writerows((*row[:-1], row[-1].isoformat(timespec="seconds") + "Z") for row in rows)
            yield buffer.getvalue()


def runs_of_file(ledger: Ledger, file: str, data_roots: Sequence[Path]) -> tuple[str, ...]:
    """The runs whose contact list was ``file`` as the pages show it (``run_files.shown_path``: relative
    to its data root), from the file each run recorded (``ledger_runs.source_file``)."""
    with ledger.engine.connect() as conn:
        runs = conn.execute(select(ledger_runs.c.run_id, ledger_runs.c.source_file)).all()
    return tuple(r.run_id for r in runs if r.source_file and shown_path(r.source_file, data_roots) == file)


def changed_since_report(ledger: Ledger, run_id: str) -> int | None:
    """How many of the run's contacts changed after the run ended (and its report was written): an operator
    acted on them, or a later run moved them on, so the run's CSV (their current state) differs from the
    report. None: the run has not ended. (An erased contact leaves the run's contacts altogether.)"""
    with ledger.engine.connect() as conn:
        ended = conn.execute(select(ledger_runs.c.finished_at).where(ledger_runs.c.run_id == run_id)).scalar()
        if ended is None:
            return None
        # Two index range reads, not one scan of the run's contacts: those changed after the run ended
        # (run_id, updated_at), and those acted on since then whose change left updated_at (a release).
        changed = conn.execute(
            select(func.count()).where(sent_contacts.c.run_id == run_id, sent_contacts.c.updated_at > ended)
        ).scalar_one()
        acted = select(operator_actions.c.email).where(operator_actions.c.at > ended).distinct().subquery()
        released = conn.execute(
            select(func.count())
            .select_from(acted.join(sent_contacts, sent_contacts.c.email == acted.c.email))
            .where(sent_contacts.c.run_id == run_id, sent_contacts.c.updated_at <= ended)
        ).scalar_one()
    return changed + released
