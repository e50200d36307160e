"""SQL pieces every concern of the ledger shares: a contact's latest attempt, the state a contact is shown
in, which of a run's contacts have a message due, batch numbering, and locking contacts in key order."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

from sqlalchemy import and_, case, func, literal, select, tuple_, update

from welcome_mailer.ledger import bulk
from welcome_mailer.ledger.rules import CLAIMED, SENDING, SENT, UNRECORDED_ATTEMPT_STATES
from welcome_mailer.ledger.schema import send_attempts, sent_contacts

MATCH_CHUNK = 1000  # ids per IN (...) lookup


def batch_size_for(count: int, batch_size: int, max_batches: int, min_batch_contacts: int) -> int:
    """Contacts per send batch: at least ``batch_size``, at most ``max_batches`` batches, and at most one
    per ``min_batch_contacts`` contacts."""
    max_batches = max(1, min(max_batches, count // min_batch_contacts))
    return max(batch_size, math.ceil(count / max_batches))


def batch_no_of(email, size: int):
    """A contact's batch: its place in the run's contacts in key order, ``size`` a batch."""
    return (func.row_number().over(order_by=email) - 1) // size


def number_batches(
    conn,
    run_id: str,
    batch_size: int,
    max_batches: int,
    min_batch_contacts: int = 1,
    numbered_by_insert: int | None = None,
    first_batch_no: int = 0,
) -> tuple[int, int, list[int]]:
    """The run's contacts with a message due (``due_contacts``), numbered into batches of at least
    ``batch_size``, at most ``max_batches`` of them, and at most one per ``min_batch_contacts`` (a send
    task costs Airflow more than sending a few thousand emails), from ``first_batch_no`` on.
    ``numbered_by_insert``: how many contacts claim inserted, numbered among themselves from 0 (so
    ``first_batch_no`` must be 0); when they are all the run holds in flight, their numbers stand (they all
    have their first attempt due: nothing else is looked up)."""
    if numbered_by_insert is not None and first_batch_no:
        raise ValueError("contacts numbered by claim's insert are numbered from 0")
    in_flight = select(func.count()).where(  # an index count; those due are among them
        sent_contacts.c.run_id == run_id, sent_contacts.c.status.in_((CLAIMED, SENDING))
    )
    if numbered_by_insert is not None and conn.execute(in_flight).scalar_one() == numbered_by_insert:
        count = numbered_by_insert  # everything the run holds in flight was inserted now: all due
    else:
        count = conn.execute(select(func.count()).select_from(due_contacts(run_id).subquery())).scalar_one()
    if count == 0:
        return 0, batch_size, []
    size = batch_size_for(count, batch_size, max_batches, min_batch_contacts)
    if count == numbered_by_insert:
        return count, size, list(range(math.ceil(count / size)))
    due = due_contacts(run_id).subquery()
    numbered = select(due.c.email, (first_batch_no + batch_no_of(due.c.email, size)).label("batch_no")).subquery()
    # Only rows whose number changes are written: a first claim of a file's contacts numbered them as it
    # inserted them, and writes nothing here (rewriting every row makes a new version of each, under every
    # index of the table: a large share of a claim).
    conn.execute(
        update(sent_contacts)
        .where(
            sent_contacts.c.email == numbered.c.email,
            sent_contacts.c.batch_no.is_distinct_from(numbered.c.batch_no),
        )
        .values(batch_no=numbered.c.batch_no)
    )
    return count, size, list(range(first_batch_no, first_batch_no + math.ceil(count / size)))


def due_batches(conn, run_id: str) -> list[int]:
    """The batch numbers the run's contacts with a message due hold now (``due_contacts``), in order."""
    due = due_contacts(run_id).subquery()
    return list(
        conn.execute(
            select(sent_contacts.c.batch_no)
            .where(sent_contacts.c.email.in_(select(due.c.email)), sent_contacts.c.batch_no.is_not(None))
            .distinct()
            .order_by(sent_contacts.c.batch_no)
        ).scalars()
    )


def next_batch_no(conn, run_id: str) -> int:
    """A batch number no sending contact of the run holds: one more than the highest (0 when none). One
    index probe: the end of the run's sending contacts in (run_id, status, batch_no)."""
    highest = conn.execute(
        select(sent_contacts.c.batch_no)
        .where(sent_contacts.c.run_id == run_id, sent_contacts.c.status == SENDING)
        .where(sent_contacts.c.batch_no.is_not(None))
        .order_by(sent_contacts.c.batch_no.desc())
        .limit(1)
    ).scalar()
    return 0 if highest is None else highest + 1


def latest_attempt():
    """Join condition: a contact and its latest attempt (``sent_contacts.attempts`` numbers it)."""
    return and_(send_attempts.c.email == sent_contacts.c.email, send_attempts.c.attempt == sent_contacts.c.attempts)


def shown_status():
    """A contact's state as reports and pages show it (SQL, over ``with_latest_attempt``): ``sent`` for a
    sending contact whose latest attempt the provider accepted, else its own state."""
    return case(
        (and_(sent_contacts.c.status == SENDING, send_attempts.c.status == SENT), SENT), else_=sent_contacts.c.status
    )


def with_latest_attempt():
    """sent_contacts outer-joined to each contact's latest attempt (an erased or never-sent row has none)."""
    return sent_contacts.outerjoin(send_attempts, latest_attempt())


def unaccepted_attempts(run_id: str):
    """The run's sending contacts whose latest attempt the provider has not accepted yet (pending,
    dispatched), found from the attempts' partial index of those without a provider message id
    (``ix_send_attempts_unaccepted``: it holds what is still owed, not every message): such an attempt
    always belongs to its contact's run (claim and start_attempts record it for their run, a take-over
    moves it to the taker), and has no message id until record_sent gives it one.

    Each attempt's contact is checked by its primary key, one probe per attempt, whatever the statistics:
    a correlated IN (unlike a join or EXISTS, which Postgres plans as a join) is a subquery run per
    attempt, and its only condition, the email, leaves the primary key as its only index. As a join, on a
    claim's just-inserted rows that were never analysed, each attempt scanned the run's contacts through
    their (run, state) index: quadratic in the run's size (docs/performance-history.md)."""
    contact = select(sent_contacts.c.run_id, sent_contacts.c.status, sent_contacts.c.attempts).where(
        sent_contacts.c.email == send_attempts.c.email
    )
    return (
        select(send_attempts.c.email)
        .where(send_attempts.c.run_id == run_id, send_attempts.c.provider_message_id.is_(None))
        .where(send_attempts.c.status.in_(UNRECORDED_ATTEMPT_STATES))
        .where(tuple_(literal(run_id), literal(SENDING), send_attempts.c.attempt).in_(contact))
    )


def due_contacts(run_id: str):
    """The run's contacts with a message due: claimed (a new attempt is due), or sending with their latest
    attempt not accepted yet (a send task's, or a crashed one's, to send with the same key)."""
    claimed = select(sent_contacts.c.email).where(sent_contacts.c.run_id == run_id, sent_contacts.c.status == CLAIMED)
    return claimed.union_all(unaccepted_attempts(run_id))


def sending_split(conn, run_id: str) -> dict[str, int]:
    """The run's sending contacts, as shown: {sending: latest attempt not accepted yet, sent: accepted,
    waiting for its outcome}. A sending contact's latest attempt is one or the other (its outcome moves
    the contact on), so sent is the difference of two index counts, not a join over every sent message."""
    sending, unaccepted = conn.execute(
        select(
            select(func.count())
            .where(sent_contacts.c.run_id == run_id, sent_contacts.c.status == SENDING)
            .scalar_subquery(),
            select(func.count()).select_from(unaccepted_attempts(run_id).subquery()).scalar_subquery(),
        )
    ).one()
    return {SENDING: unaccepted, SENT: sending - unaccepted}


def lock_contacts(conn, emails: Sequence[str]) -> None:
    """Postgres: lock these contacts (sorted) in key order, as every writer that takes a contact and its
    attempts does first. SQLite: one writer holds the database."""
    if not bulk.is_postgres(conn):
        return
    for chunk in chunks(emails, MATCH_CHUNK):
        conn.execute(bulk.probe(sent_contacts, "email", chunk, [sent_contacts.c.email], lock=True)).all()


def chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
