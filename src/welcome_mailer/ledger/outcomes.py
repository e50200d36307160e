"""Outcomes: applying what any source heard about a message (one operation, idempotent and
order-tolerant), and the inbox that keeps events that came before their send was recorded."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import delete, exists, func, or_, select

from welcome_mailer.ledger import bulk
from welcome_mailer.ledger.attempts import AcceptedAttempt
from welcome_mailer.ledger.engine import READ_SNAPSHOT
from welcome_mailer.ledger.queries import MATCH_CHUNK, chunks, latest_attempt, lock_contacts
from welcome_mailer.ledger.rules import (
    ATTEMPT_STRENGTH,
    SENDING,
    SENT,
    UNRECORDED_ATTEMPT_STATES,
    already_applied,
    contact_follows,
)
from welcome_mailer.ledger.schema import outcome_inbox, send_attempts, sent_contacts
from welcome_mailer.vocabulary import STRENGTH, OutcomeEvent, PendingMessage, idempotency_key, utcnow

OUTCOME_CHUNK = 5000  # outcome events per transaction (record_outcomes)
PENDING_PAGE = 10_000  # pending messages read at a time (pending_messages)


@dataclass(frozen=True)
class OutcomeCounts:
    applied: int  # messages whose state changed
    unchanged: int  # duplicates, or weaker than what the ledger already knew
    inboxed: int  # matched no recorded send (yet): kept in the inbox


class Outcomes:
    """Applying outcome events, and the inbox (part of ``Ledger``)."""

    # -- outcomes -----------------------------------------------------------------------------------
    def pending_messages(self, run_id: str) -> Iterator[PendingMessage]:
        """The run's messages that the provider accepted but has not yet reported an outcome for, streamed
        PENDING_PAGE rows at a time from one read snapshot (a server-side cursor on Postgres; a deferred,
        read-only transaction on SQLite, which blocks no writer under WAL). A poll of 800k pending messages
        held them all at once: 680 MB in the sensor's process."""
        with self.engine.connect() as conn:
            conn.execution_options(stream_results=True, yield_per=PENDING_PAGE, **{READ_SNAPSHOT: True})
            query = (
                select(
                    send_attempts.c.email,
                    send_attempts.c.attempt,
                    send_attempts.c.provider_message_id,
                    send_attempts.c.updated_at,  # set by record_sent, unchanged until an outcome
                )
                .select_from(sent_contacts.join(send_attempts, latest_attempt()))
                .where(sent_contacts.c.run_id == run_id, sent_contacts.c.status == SENDING)
                .where(send_attempts.c.status == SENT)
            )
            for row in conn.execute(query):
                yield PendingMessage(*row)

    def record_outcomes(self, events: Iterable[OutcomeEvent]) -> OutcomeCounts:
        """Apply outcome events from any source, whichever run sent the message and however late.

        - Matched by provider message id, else by idempotency key; never by run.
        - Idempotent and order-tolerant: per message, the strongest outcome wins (blocked < delivered <
          bounced); a duplicate or a weaker event changes nothing.
        - The contact follows: delivered or bounced from any of its messages makes it final (a bounce
          overrules a delivery); blocked only counts for its latest message while that one is in flight.
        - An event that matches no message whose send is recorded is kept in ``outcome_inbox`` and applied
          by ``record_sent`` when the send is recorded (or stays there, counted, when it never matches).

        Events are applied OUTCOME_CHUNK at a time, each chunk in a transaction of its own, as they are
        read from ``events`` (a source may yield them while it polls): a poll of a million outcomes never
        holds a million rows' locks, and other writers (pushed webhook events) interleave. The rules
        above need no more than that: each chunk is guarded by the state it reads.
        """
        applied = unchanged = unmatched = 0
        events = iter(events)
        while chunk := list(itertools.islice(events, OUTCOME_CHUNK)):
            now = utcnow()
            with self.engine.begin() as conn:
                chunk_applied, chunk_unchanged, chunk_unmatched = self._apply_polled(conn, chunk, now)
                bulk.insert_rows(
                    conn,
                    outcome_inbox,
                    ("provider_message_id", "idempotency_key", "outcome", "source", "detail", "received_at"),
                    [
                        (e.provider_message_id, e.idempotency_key, e.outcome, e.source, (e.detail or "")[:2000], now)
                        for e in chunk_unmatched
                    ],
                )
            applied, unchanged, unmatched = (
                applied + chunk_applied, unchanged + chunk_unchanged, unmatched + len(chunk_unmatched)
            )  # fmt: skip
        return OutcomeCounts(applied, unchanged, unmatched)

    def inbox_size(self) -> int:
        """Outcome events that matched no recorded send (yet)."""
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(outcome_inbox)).scalar_one()

    @staticmethod
    def _inbox_events_for(conn, accepted: Sequence[AcceptedAttempt]) -> list[tuple[str, object]]:
        """The inbox's events for these attempts (by message id or by idempotency key), whose send is being
        recorded, each with the email of its contact: (email, inbox row)."""
        if not conn.execute(select(exists().select_from(outcome_inbox))).scalar():
            return []  # the usual case: one cheap read
        waiting = []
        for chunk in chunks([a for a in accepted if a.message_id], MATCH_CHUNK):
            by_id = {a.message_id: a.email for a in chunk}
            by_key = {idempotency_key(a.email, a.attempt): a.email for a in chunk}
            rows = conn.execute(
                select(outcome_inbox).where(
                    or_(outcome_inbox.c.provider_message_id.in_(by_id), outcome_inbox.c.idempotency_key.in_(by_key))
                )
            ).all()
            waiting += [(by_id.get(r.provider_message_id) or by_key[r.idempotency_key], r) for r in rows]
        return waiting

    def _apply_inbox(self, conn, waiting: Sequence, now: datetime) -> None:
        """Apply these inbox events (``_inbox_events_for``: their attempts' sends were just recorded, their
        contacts locked) and remove those applied. An event whose attempt this run could not record (a
        taker holds it now) stays, for the taker's record_sent."""
        events = [
            OutcomeEvent(r.outcome, r.provider_message_id, r.idempotency_key, r.source, r.detail) for r in waiting
        ]
        _, _, unmatched = self._apply(conn, events, now)
        still_waiting = set(unmatched)
        applied = [r.id for r, event in zip(waiting, events, strict=True) if event not in still_waiting]
        for chunk in chunks(applied, MATCH_CHUNK):
            conn.execute(delete(outcome_inbox).where(outcome_inbox.c.id.in_(chunk)))

    def _apply_polled(self, conn, events: list[OutcomeEvent], now: datetime) -> tuple[int, int, list[OutcomeEvent]]:
        """``_apply``; on SQLite, events a source polled from the ledger (``OutcomeEvent.polled``) take their
        attempt's state as the poll read it (sent, its contact sending with it) instead of a lookup each,
        and every write is guarded by that state: if one misses (an outcome, a take-over or an operator came
        in between), none of them stands and the events are looked up. On Postgres the lookup locks what
        it reads, in key order, as every writer does: it is never skipped."""
        if bulk.is_postgres(conn) or not any(_polled_by_id(e) for e in events):
            return self._apply(conn, events, now)
        try:
            with conn.begin_nested():
                return self._apply(conn, events, now, trust_polled=True)
        except _StalePoll:
            return self._apply(conn, events, now)

    def _apply(
        self, conn, events: list[OutcomeEvent], now: datetime, trust_polled: bool = False
    ) -> tuple[int, int, list[OutcomeEvent]]:
        """The rules of record_outcomes, inside the caller's transaction. Returns (applied, unchanged,
        events that matched no recorded send). ``trust_polled``: see ``_apply_polled``."""
        if trust_polled:
            polled, others = [], []
            for event in events:
                if _polled_by_id(event):
                    polled.append(event.polled)
                else:
                    others.append(event)
            found = self._find_attempts(conn, others)
            polled_contacts = {m.email for m in polled}
            if any(row.email in polled_contacts for row in found.values()):
                # A contact read both ways (the poll's and now): its rules must start from now's alone.
                raise _StalePoll
            found |= {  # found by their message ids: no key computed (a hash each)
                ("id", m.message_id): _FoundAttempt(m.email, m.attempt, SENT, m.message_id, None, SENDING, m.attempt)
                for m in polled
            }
        else:
            found = self._find_attempts(conn, events)
        strongest: dict[tuple[str, int], str] = {}  # per attempt, the strongest outcome among the events
        unmatched = []
        for event in events:
            row = _attempt_of(found, event)
            if row is None or row.status in UNRECORDED_ATTEMPT_STATES:
                unmatched.append(event)
                continue
            if already_applied(row.status, event.outcome):
                continue
            key = (row.email, row.attempt)
            if key not in strongest or STRENGTH[event.outcome] > STRENGTH[strongest[key]]:
                strongest[key] = event.outcome
        rows = {(r.email, r.attempt): r for r in found.values()}
        attempt_updates = [
            {"email": email, "attempt": attempt, "status": outcome, "old": rows[email, attempt].status}
            for (email, attempt), outcome in strongest.items()
            if STRENGTH[outcome] > ATTEMPT_STRENGTH.get(rows[email, attempt].status, 0)
        ]
        contact_updates: dict[str, dict] = {}
        for (email, attempt), outcome in strongest.items():
            row = rows[email, attempt]
            current = contact_updates.get(email, {}).get("status", row.contact_status)
            if contact_follows(current, row.contact_attempts, attempt, outcome):
                contact_updates[email] = {
                    "email": email, "attempts": row.contact_attempts, "status": outcome, "old": row.contact_status
                }  # fmt: skip
        # Each update is guarded by the state read above (rows are locked on Postgres, the database on
        # SQLite): nothing changes between the read and the write, unless the state came from a poll.
        written = 0
        for old_status in {u["old"] for u in attempt_updates}:
            written += bulk.update_rows(
                conn,
                send_attempts,
                [u for u in attempt_updates if u["old"] == old_status],
                match={"email": "email", "attempt": "attempt"},
                assign={"status": "status"},
                guards={"status": old_status},
                constants={"updated_at": now},
            )
        for old_status in {u["old"] for u in contact_updates.values()}:
            written += bulk.update_rows(
                conn,
                sent_contacts,
                [u for u in contact_updates.values() if u["old"] == old_status],
                match={"email": "email", "attempts": "attempts"},
                assign={"status": "status"},
                guards={"status": old_status},
                constants={"updated_at": now},
            )
        if trust_polled and written != len(attempt_updates) + len(contact_updates):
            raise _StalePoll
        matched = len(events) - len(unmatched)
        return len(attempt_updates), matched - len(attempt_updates), unmatched

    @staticmethod
    def _find_attempts(conn, events: list[OutcomeEvent]) -> dict[tuple[str, str], object]:
        """The attempts the events name (("id", message id) or ("key", idempotency key)), with their
        contact's state, locked for this transaction (Postgres; SQLite's write lock covers it)."""
        columns = (
            send_attempts.c.email,
            send_attempts.c.attempt,
            send_attempts.c.status,
            send_attempts.c.provider_message_id,
            send_attempts.c.idempotency_key,
            sent_contacts.c.status.label("contact_status"),
            sent_contacts.c.attempts.label("contact_attempts"),
        )
        joined = send_attempts.join(sent_contacts, sent_contacts.c.email == send_attempts.c.email)
        postgres = bulk.is_postgres(conn)

        def look_up(column: str, values: set[str]) -> list[_FoundAttempt]:
            """The attempts with these values of ``column``: on Postgres unlocked and without their contact's
            state (each value an index probe); on SQLite with it (the write lock covers the read)."""
            found = []
            for chunk in chunks(sorted(values), MATCH_CHUNK):
                if postgres:
                    query = bulk.probe(send_attempts, column, chunk, columns[:5])
                else:
                    query = select(*columns).select_from(joined).where(send_attempts.c[column].in_(chunk))
                found.extend(_FoundAttempt(*row) for row in conn.execute(query).all())
            return found

        # By message id first; by idempotency key only the events those ids did not find (an event that
        # carries both, as a status lookup's, is looked up once).
        looked_up = look_up("provider_message_id", {e.provider_message_id for e in events if e.provider_message_id})
        by_id = {row.provider_message_id for row in looked_up}
        by_key = {e.idempotency_key for e in events if e.idempotency_key and e.provider_message_id not in by_id}
        looked_up += look_up("idempotency_key", by_key)
        if not postgres:
            return _by_message(looked_up)
        # Postgres: then lock those attempts that an event may change, and their contacts, through the
        # primary keys in key order, and read their state under the locks. An event its attempt already has
        # (a webhook's duplicate, a lookup after the push) locks nothing: an attempt's outcome only ever gets
        # stronger, and its contact's effect was written with it, so it stays a no-op under the lock too.
        keys, settled = set(), {}
        probed_by = _by_message(looked_up)
        for event in events:
            row = _attempt_of(probed_by, event)
            if row is None:
                continue
            if already_applied(row.status, event.outcome):
                settled[row.email, row.attempt] = row
            else:
                keys.add((row.email, row.attempt))
        # Contacts first, then their attempts, as every other writer (claim, record_sent, the take-over)
        # takes them: locking an attempt before its contact could close a cycle with one of those.
        lock_contacts(conn, sorted({email for email, _ in keys}))
        rows = []
        for chunk in chunks(sorted(keys), MATCH_CHUNK):
            # Each attempt a lookup of its own, locked in the keys' order (joined as a whole, without
            # fresh statistics the lock became a hash join over sequential scans of the ledger)
            lock = bulk.probe(send_attempts, ("email", "attempt"), chunk, columns, source=joined, lock=True)
            rows.extend(_FoundAttempt(*row) for row in conn.execute(lock).all())
        rows.extend(row for key, row in settled.items() if key not in keys)
        return _by_message(rows)


def _polled_by_id(event: OutcomeEvent) -> bool:
    """Whether the event answers a message a poll read, and names it by the message id read."""
    return (
        event.polled is not None
        and bool(event.polled.message_id)
        and event.provider_message_id == event.polled.message_id
    )


class _StalePoll(Exception):
    """A write guarded by a poll's state missed: the state changed since the poll read it."""


class _FoundAttempt(NamedTuple):
    """An attempt an outcome event names, as ``_find_attempts`` reads it: a plain tuple (reading a Row's
    attributes by name was a large share of recording outcomes on SQLite)."""

    email: str
    attempt: int
    status: str
    provider_message_id: str | None
    idempotency_key: str | None  # None: a polled message's, found by its message id (``_apply``)
    contact_status: str | None = None  # not read by the unlocked probe
    contact_attempts: int | None = None


def _by_message(rows) -> dict[tuple[str, str], object]:
    """Attempt rows by ("id", provider message id) and by ("key", idempotency key)."""
    found: dict[tuple[str, str], object] = {}
    for row in rows:
        if row.provider_message_id:
            found["id", row.provider_message_id] = row
        found["key", row.idempotency_key] = row
    return found


def _attempt_of(found: dict[tuple[str, str], object], event: OutcomeEvent):
    """The attempt an event names (``_by_message``'s rows): by provider message id, else by idempotency key."""
    return found.get(("id", event.provider_message_id)) or found.get(("key", event.idempotency_key))
