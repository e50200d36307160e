"""The ledger's rules: who was emailed, with which attempt, and what came of it. Every rule of "at most one
email per contact" lives in this module; tables are in ``schema``, SQL plumbing in ``bulk``.

Contact states (``sent_contacts.status``)::

    (a new contact) --claim--> sending              (its first attempt recorded with it, pending)
    claimed --start_attempts--> sending --record_outcomes--> delivered | bounced | blocked
                                sending --record_sent(refused)--> bounced
    blocked --requeue_blocked--> claimed            (a NEW attempt, while claim_attempts < max_attempts)
    blocked --close_out--> failed                   (max_attempts reached)
    failed  --claim by a later run--> claimed       (listed again, once retry_failed_after has passed)
    sending --start_attempts(resend_unconfirmed=False)--> unconfirmed   (its attempt was dispatched)
    any --record_outcomes(complained)--> complained  (the person reported the email as spam)
    any --unsubscribe--> unsubscribed                (RFC 8058 one-click; also for addresses never seen)
    any     --suppress--> suppressed            (an operator: never email this address)
    failed  --release--> failed, due at once    (an operator: the next run that lists it retries it)
    any     --erase--> (no row; a keyed hash in erased_contacts)   (an operator, GDPR art. 17)

- delivered, bounced, complained, unsubscribed and suppressed are final: no run ever claims them again,
  and no outcome event undoes them (a stronger one may still overrule a weaker one: a bounce a delivery,
  a complaint either; nothing a provider reports overrules unsubscribed or suppressed).
- An erased address has no row anywhere, only its keyed hash: ``claim`` drops staged contacts whose hash
  is erased, so erasing never causes a new email.
- ``sending`` means the contact's latest attempt (``attempts``) is on its way; that attempt's own state
  says how far: ``pending`` / ``dispatched`` (recorded, the provider's acceptance not yet), ``sent``
  (accepted, no outcome yet). ``record_sent`` writes only the attempt; reports and pages show such a
  contact as ``sent`` (``shown_status``). A contact row is written when its state changes, not for
  every step of a message (issue 14: a row version fewer per contact and message, under 3 indexes).
- An attempt not accepted yet is only ever re-sent with the same idempotency key, through an idempotent
  transport. Through one without
  idempotency (SMTP after DATA without a reply) it becomes ``unconfirmed`` and is never resent
  automatically: at most once beats at least once.
- claimed / sending / blocked contacts of a run whose lease expired (or that finished without
  closing them) are taken over by the next run that lists them, with their state and attempt as they are.
- Every write of a run is guarded by the owning run id (the contact's, and the attempt's: a take-over
  moves the attempts not yet recorded to the taker), so a run that lost its contacts cannot touch them.
  Outcome events are not: they are matched to their message by provider message id or idempotency key,
  whichever run sent it and however late they come (``record_outcomes``).
- Writers that take a contact and its attempts lock the contact first (claim, record_sent, the take-over,
  record_outcomes, erase), each set in key order: a send recorded while its outcome is pushed cannot
  deadlock. Rarer cycles are left (bulk state changes against outcomes: requeue_blocked, close_out and
  start_attempts update a batch in index order): Postgres aborts one side, and the task retries, or the
  provider posts its webhook again. Nothing is written by the aborted side.

All timestamps are naive UTC.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from typing import NamedTuple

from sqlalchemy import Engine, and_, case, delete, exists, func, literal, or_, select, text, tuple_, update

from welcome_mailer.contacts import Contact
from welcome_mailer.ledger import bulk
from welcome_mailer.ledger.engine import READ_SNAPSHOT
from welcome_mailer.ledger.schema import (
    erased_contacts,
    ledger_runs,
    operator_actions,
    outcome_inbox,
    send_attempts,
    sent_contacts,
    staged_contacts,
)
from welcome_mailer.outcomes.events import BLOCKED, BOUNCED, COMPLAINED, DELIVERED, STRENGTH, OutcomeEvent

# Contact states
CLAIMED, SENDING, SENT, FAILED, UNCONFIRMED = "claimed", "sending", "sent", "failed", "unconfirmed"
UNSUBSCRIBED = "unsubscribed"  # the person's own one-click unsubscribe
SUPPRESSED = "suppressed"  # an operator's "never email this address"
IN_FLIGHT_STATES = (CLAIMED, SENDING, BLOCKED)
FINAL_STATES = (DELIVERED, BOUNCED, COMPLAINED, UNSUBSCRIBED, SUPPRESSED)
# The person's wish and the operator's decision outrank anything a provider reports about its messages.
CONTACT_STRENGTH = {**STRENGTH, UNSUBSCRIBED: max(STRENGTH.values()) + 1, SUPPRESSED: max(STRENGTH.values()) + 1}
UNSUBSCRIBE_OWNER = "unsubscribe"  # run_id of the rows of addresses unsubscribed before any run knew them
OPERATOR_RUN_ID = "operator"  # owns the rows an operator creates (suppressing an address never seen)
# A released failed contact: failed "long ago", so the next run that lists it retries it whatever its
# retry_failed_after_hours (claim's rule for failed contacts is unchanged).
RELEASED_AT = datetime(2000, 1, 1)
# Attempt states: pending (recorded, not confirmed accepted), then sent, then the provider's outcome;
# refused = the provider refused the address at once (the contact is closed as bounced); dispatched =
# handed to a transport without idempotency, reply not seen yet.
PENDING, DISPATCHED, REFUSED = "pending", "dispatched", "refused"
UNRECORDED_ATTEMPT_STATES = (PENDING, DISPATCHED)  # the provider's acceptance is not recorded
MATCH_CHUNK = 1000  # ids per IN (...) lookup
OUTCOME_CHUNK = 5000  # outcome events per transaction (record_outcomes)
PENDING_PAGE = 10_000  # pending messages read at a time (pending_messages)
# A message the provider refused at once is as final as a bounced one.
ATTEMPT_STRENGTH = {**STRENGTH, REFUSED: STRENGTH[BOUNCED]}


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def erased_hash(key: bytes, email: str) -> str:
    """The keyed hash an erased address is remembered by (HMAC-SHA256): without the key, nobody can test
    whether an address is among the erased."""
    return hmac.new(key, email.encode(), hashlib.sha256).hexdigest()


class ContactsTakenOver(RuntimeError):
    """A run was about to send attempts that another run has taken over (its lease expired)."""


class EraseKeyMissing(RuntimeError):
    """The ledger holds erased contacts, or an erase was asked for, and no erase key is configured."""


def _batch_size(count: int, batch_size: int, max_batches: int, min_batch_contacts: int) -> int:
    """Contacts per send batch: at least ``batch_size``, at most ``max_batches`` batches, and at most one
    per ``min_batch_contacts`` contacts."""
    max_batches = max(1, min(max_batches, count // min_batch_contacts))
    return max(batch_size, math.ceil(count / max_batches))


def _batch_no(email, size: int):
    """A contact's batch: its place in the run's contacts in key order, ``size`` a batch."""
    return (func.row_number().over(order_by=email) - 1) // size


def idempotency_key(email: str, attempt: int) -> str:
    """The provider idempotency key of one attempt: stable for (email, attempt), different for every attempt."""
    digest = hashlib.sha256(email.encode()).hexdigest()[:40]
    return f"welcome-{digest}-{attempt}"


def _idempotency_key_sql(conn, email, attempt: int):
    """``idempotency_key`` as a SQL expression, for attempts recorded inside the database (Postgres:
    its own sha256; SQLite: the Python function, registered on the connection)."""
    if bulk.is_postgres(conn):
        digest = func.left(func.encode(func.sha256(func.convert_to(email, "UTF8")), "hex"), 40)
        return literal("welcome-") + digest + literal(f"-{attempt}")
    conn.connection.dbapi_connection.create_function("welcome_idempotency_key", 2, idempotency_key, deterministic=True)
    return func.welcome_idempotency_key(email, attempt)


@dataclass(frozen=True)
class ClaimResult:
    staged: int  # unique valid contacts in the file
    claimed_new: int  # never seen before
    taken_over: int  # failed contacts listed again, or contacts of a dead run
    failed_recently: int  # failed contacts listed again too soon: left alone until retry_failed_after passed
    owned: int  # contacts this run is responsible for (new + taken over + already its own)
    to_send: int  # owned contacts whose message of this claim is not confirmed sent yet (claimed, sending)
    batch_size: int  # contacts per send batch (may exceed the requested size to stay under max_batches)
    batches: list[int]
    held_by_other_runs: int = 0  # in flight under another live run: not contacted yet, not this run's
    held_until: datetime | None = None  # the latest lease expiry among those runs

    @property
    def skipped(self) -> int:
        return self.staged - self.owned


@dataclass(frozen=True)
class OutgoingAttempt:
    email: str
    name: str
    attempt: int

    @property
    def idempotency_key(self) -> str:
        return idempotency_key(self.email, self.attempt)


@dataclass(frozen=True)
class AcceptedAttempt:
    email: str
    attempt: int
    message_id: str | None  # None when the provider refused the message
    error: str | None = None


@dataclass(frozen=True, slots=True)  # slots: a poll streams up to a run's whole size of these
class PendingMessage:
    email: str
    attempt: int
    message_id: str
    sent_at: datetime | None = None  # when the provider accepted it (an outcome source's settle time)

    @property
    def idempotency_key(self) -> str:
        return idempotency_key(self.email, self.attempt)


@dataclass(frozen=True)
class OutcomeCounts:
    applied: int  # messages whose state changed
    unchanged: int  # duplicates, or weaker than what the ledger already knew
    inboxed: int  # matched no recorded send (yet): kept in the inbox


class Ledger:
    def __init__(
        self, engine: Engine, lease: timedelta = timedelta(minutes=30), erase_key: bytes | None = None
    ) -> None:
        self.engine = engine
        self.lease = lease
        self.erase_key = erase_key  # keys erased_contacts' hashes (settings: WELCOME_MAILER_ERASE_KEY)

    # -- runs and leases ----------------------------------------------------------------------------
    def renew_lease(self, run_id: str) -> None:
        """Register the run, or extend its lease. Every task of the run calls this first."""
        now = utcnow()
        values = {"run_id": run_id, "lease_expires_at": now + self.lease, "created_at": now}
        with self.engine.begin() as conn:
            stmt = bulk.dialect_insert(conn, ledger_runs).values(**values)
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["run_id"],
                    set_={"lease_expires_at": values["lease_expires_at"], "finished_at": None},
                )
            )

    def finish_run(self, run_id: str) -> None:
        """The run is over: whatever it still holds (e.g. messages it never saw resolved) is free to take over."""
        with self.engine.begin() as conn:
            conn.execute(update(ledger_runs).where(ledger_runs.c.run_id == run_id).values(finished_at=utcnow()))
            conn.execute(delete(staged_contacts).where(staged_contacts.c.run_id == run_id))

    # -- staging ------------------------------------------------------------------------------------
    def clear_stage(self, run_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(staged_contacts).where(staged_contacts.c.run_id == run_id))

    def stage(self, run_id: str, contacts: Sequence[Contact]) -> None:
        """Bulk-load one chunk of a run's contacts."""
        if not contacts:
            return
        # In key order, consecutive rows land on neighbouring index pages: 900k random emails staged on
        # SQLite in 50k chunks took 6.9 s unsorted and 4.4 s sorted, the sort included.
        contacts = sorted(contacts, key=attrgetter("email"))
        with self.engine.begin() as conn:
            bulk.load_rows(
                conn,
                staged_contacts,
                ("run_id", "email", "name", "line_no"),
                [(run_id, c.email, c.name, c.line_no) for c in contacts],
            )

    # -- claiming -----------------------------------------------------------------------------------
    def claim(
        self,
        run_id: str,
        batch_size: int,
        max_batches: int,
        retry_failed_after: timedelta = timedelta(0),
        min_batch_contacts: int = 1,
    ) -> ClaimResult:
        """Take responsibility for this run's staged contacts that nobody else has, in one transaction.

        New emails are inserted as sending, their first attempt recorded with them; contacts of dead runs
        are taken over, and so are failed contacts that failed at least ``retry_failed_after`` ago (blocks
        are temporary: retrying minutes later only meets the same block). The contacts to send are
        numbered into batches (one per send task): at most ``max_batches``, and no more than one per
        ``min_batch_contacts`` contacts. Safe to repeat (a retried task) and safe against other runs
        claiming at the same time: the insert skips conflicts, and the take-over re-checks ownership row
        by row.
        """
        now = utcnow()
        staged = select(staged_contacts.c.email).where(staged_contacts.c.run_id == run_id)
        with self.engine.begin() as conn:
            staged_count = conn.execute(select(func.count()).select_from(staged.subquery())).scalar_one()
            self._drop_erased(conn, run_id)
            new_rows = (
                select(
                    staged_contacts.c.email,
                    staged_contacts.c.name,
                    literal(SENDING),  # with its first attempt, recorded below
                    literal(1),
                    literal(1),
                    literal(run_id),
                    literal(now),
                    literal(now),
                    staged_contacts.c.line_no,
                    # The numbers _number_batches gives when every staged contact is new (a first run of a
                    # file): it then has nothing to rewrite. Otherwise it renumbers what differs.
                    _batch_no(
                        staged_contacts.c.email, _batch_size(staged_count, batch_size, max_batches, min_batch_contacts)
                    ),
                )
                .where(staged_contacts.c.run_id == run_id)
                .where(~exists().where(sent_contacts.c.email == staged_contacts.c.email))
                # In key order: two runs claiming overlapping files then wait on each other's new rows in
                # one order, never in a cycle (in scan order, Postgres found deadlocks between claimers).
                .order_by(staged_contacts.c.email)
            )
            columns = [
                *("email", "name", "status", "attempts", "claim_attempts", "run_id", "created_at", "updated_at"),
                *("source_line", "batch_no"),
            ]
            inserted = conn.execute(
                bulk.dialect_insert(conn, sent_contacts).from_select(columns, new_rows).on_conflict_do_nothing()
            ).rowcount
            if inserted:  # a retried claim inserts nothing: no need to look for contacts created now
                self._record_first_attempts(conn, run_id, now)
            # Every staged contact was new (a file's first run): none to take over, held by another run or
            # failed, and the insert numbered their batches (at 400k contacts on Postgres, the statements
            # that find this out took 3.4 s).
            all_new = inserted == staged_count
            if all_new:
                taken_over, held, held_until, owned, failed_recently = 0, 0, None, inserted, 0
            else:
                taken_over, held, held_until, owned, failed_recently = self._take_over(
                    conn, run_id, staged, now, retry_failed_after
                )
            to_send, size, batches = self._number_batches(
                conn,
                run_id,
                batch_size,
                max_batches,
                min_batch_contacts,
                numbered_by_insert=inserted if all_new else None,
            )
        return ClaimResult(
            staged_count, inserted, taken_over, failed_recently, owned, to_send, size, batches, held, held_until
        )

    @staticmethod
    def _take_over(conn, run_id: str, staged, now: datetime, retry_failed_after: timedelta):
        """claim's rules for the staged contacts the ledger already knows: take over those of dead runs and
        failed ones due again. Returns (taken over, held by live runs, their latest lease expiry, owned by
        this run, failed too recently)."""
        owner_alive = exists().where(
            ledger_runs.c.run_id == sent_contacts.c.run_id,
            ledger_runs.c.finished_at.is_(None),
            ledger_runs.c.lease_expires_at >= now,
        )
        relisted_failed = and_(sent_contacts.c.status == FAILED, sent_contacts.c.updated_at <= now - retry_failed_after)
        to_take_over = and_(
            sent_contacts.c.email.in_(staged),
            sent_contacts.c.run_id != run_id,
            or_(relisted_failed, and_(sent_contacts.c.status.in_(IN_FLIGHT_STATES), ~owner_alive)),
        )
        # Locked in key order first, as the insert above: two runs taking over one dead run's contacts
        # then wait on each other in one order, never in a cycle (in the order of whatever plan each
        # one's update got, they could deadlock). A locked row is re-checked by Postgres once its lock
        # is free, and stays as checked until this transaction ends (SQLite: one writer).
        in_key_order = (
            select(sent_contacts.c.email)
            .where(to_take_over)
            .order_by(sent_contacts.c.email)
            .with_for_update(of=sent_contacts)
        )
        taken_over = conn.execute(
            update(sent_contacts)
            .where(sent_contacts.c.email.in_(in_key_order))
            .values(
                run_id=run_id,
                updated_at=now,
                status=case((relisted_failed, CLAIMED), else_=sent_contacts.c.status),
                claim_attempts=case((relisted_failed, 0), else_=sent_contacts.c.claim_attempts),
                source_line=select(staged_contacts.c.line_no)
                .where(staged_contacts.c.run_id == run_id, staged_contacts.c.email == sent_contacts.c.email)
                .scalar_subquery(),
            )
        ).rowcount
        if taken_over:
            # Their attempts whose send is not recorded are this run's from now on: it sends (or parks) them
            # with the same key, records them, and counts them in its summary; the dead run's late
            # record_sent no longer touches them (it is guarded by the attempt's run too).
            # (UPDATE ... FROM, driven by the run's sending contacts: send_attempts has no index on status.)
            conn.execute(
                update(send_attempts)
                .where(
                    sent_contacts.c.run_id == run_id,
                    sent_contacts.c.status == SENDING,
                    send_attempts.c.email == sent_contacts.c.email,
                    send_attempts.c.attempt == sent_contacts.c.attempts,
                    send_attempts.c.status.in_(UNRECORDED_ATTEMPT_STATES),
                    send_attempts.c.run_id != run_id,
                )
                .values(run_id=run_id, updated_at=now)
            )

        held, held_until = conn.execute(
            select(func.count(), func.max(ledger_runs.c.lease_expires_at))
            .select_from(sent_contacts.join(ledger_runs, ledger_runs.c.run_id == sent_contacts.c.run_id))
            .where(sent_contacts.c.email.in_(staged), sent_contacts.c.run_id != run_id)
            .where(sent_contacts.c.status.in_(IN_FLIGHT_STATES), ledger_runs.c.finished_at.is_(None))
            .where(ledger_runs.c.lease_expires_at >= now)
        ).one()
        owned, failed_recently = conn.execute(
            select(
                func.count().filter(sent_contacts.c.run_id == run_id),
                func.count().filter(sent_contacts.c.status == FAILED),
            ).where(sent_contacts.c.email.in_(staged))
        ).one()
        return taken_over, held, held_until, owned, failed_recently

    @staticmethod
    def _record_first_attempts(conn, run_id: str, now: datetime) -> None:
        """The first attempt of every contact this claim inserted (created now, by this run), as pending,
        in the database: a new contact goes straight to ``sending``. Claiming it as ``claimed`` and
        starting its attempt in the send task wrote a second version of every new row (then under 4 indexes)."""
        just_inserted = and_(
            sent_contacts.c.run_id == run_id, sent_contacts.c.status == SENDING, sent_contacts.c.created_at == now
        )
        first = select(
            sent_contacts.c.email,
            literal(1),
            _idempotency_key_sql(conn, sent_contacts.c.email, 1),
            literal(run_id),
            literal(PENDING),
            literal(now),
            literal(now),
        ).where(just_inserted)
        columns = ("email", "attempt", "idempotency_key", "run_id", "status", "created_at", "updated_at")
        # No ON CONFLICT: a contact inserted just now has no attempts (its speculative insertion cost a
        # third of this statement, 400k rows on Postgres: 6.5 s -> 4.3 s).
        conn.execute(send_attempts.insert().from_select(columns, first))

    def _drop_erased(self, conn, run_id: str) -> None:
        """Remove the run's staged contacts whose address was erased, so claim never takes them. On
        Postgres the SHARE lock makes a concurrent erase wait for this claim's commit (its DELETE then
        removes what was claimed); an erase that committed first is seen here. SQLite runs one writer."""
        if bulk.is_postgres(conn):
            conn.execute(text("LOCK TABLE erased_contacts IN SHARE MODE"))
        erased = set(conn.execute(select(erased_contacts.c.email_hash)).scalars())
        if not erased:
            return
        if self.erase_key is None:
            raise EraseKeyMissing(
                "the ledger holds erased contacts: set WELCOME_MAILER_ERASE_KEY (the key they were erased "
                "with) in every Airflow component, or claim could email an erased address"
            )
        emails = conn.execute(select(staged_contacts.c.email).where(staged_contacts.c.run_id == run_id)).scalars()
        dropped = [e for e in emails if erased_hash(self.erase_key, e) in erased]
        for chunk in _chunks(dropped, MATCH_CHUNK):
            conn.execute(
                delete(staged_contacts).where(staged_contacts.c.run_id == run_id, staged_contacts.c.email.in_(chunk))
            )

    @staticmethod
    def _number_batches(
        conn,
        run_id: str,
        batch_size: int,
        max_batches: int,
        min_batch_contacts: int = 1,
        numbered_by_insert: int | None = None,
    ) -> tuple[int, int, list[int]]:
        """The run's contacts with a message due (``_due``), numbered into batches of at least
        ``batch_size``, at most ``max_batches`` of them, and at most one per ``min_batch_contacts`` (a send
        task costs Airflow more than sending a few thousand emails). ``numbered_by_insert``: how many
        contacts claim inserted, numbered among themselves; when they are all the run holds in flight, their
        numbers stand (they all have their first attempt due: nothing else is looked up)."""
        in_flight = select(func.count()).where(  # an index count; those due are among them
            sent_contacts.c.run_id == run_id, sent_contacts.c.status.in_((CLAIMED, SENDING))
        )
        if numbered_by_insert is not None and conn.execute(in_flight).scalar_one() == numbered_by_insert:
            count = numbered_by_insert  # everything the run holds in flight was inserted now: all due
        else:
            count = conn.execute(select(func.count()).select_from(_due(run_id).subquery())).scalar_one()
        if count == 0:
            return 0, batch_size, []
        size = _batch_size(count, batch_size, max_batches, min_batch_contacts)
        if count == numbered_by_insert:
            return count, size, list(range(math.ceil(count / size)))
        due = _due(run_id).subquery()
        numbered = select(due.c.email, _batch_no(due.c.email, size).label("batch_no")).subquery()
        # Only rows whose number changes are written: a first claim of a file's contacts numbered them as it
        # inserted them, and writes nothing here (rewriting every row, each a new version under 4 indexes then,
        # was a third of a 400k claim on Postgres).
        conn.execute(
            update(sent_contacts)
            .where(
                sent_contacts.c.email == numbered.c.email,
                sent_contacts.c.batch_no.is_distinct_from(numbered.c.batch_no),
            )
            .values(batch_no=numbered.c.batch_no)
        )
        return count, size, list(range(math.ceil(count / size)))

    # -- sending ------------------------------------------------------------------------------------
    def start_attempts(self, run_id: str, batch_no: int, resend_unconfirmed: bool = True) -> list[OutgoingAttempt]:
        """Record a new attempt for every claimed contact of the batch (a resend, or a failed contact listed
        again: new contacts got theirs from ``claim``), then return every attempt of the batch that is
        recorded but not confirmed.

        Attempts an earlier try recorded (a retried task, a crashed run taken over) are returned again when
        ``resend_unconfirmed`` (the transport is idempotent: the same key cannot make a second email).
        Otherwise those that were dispatched (``mark_dispatched``) become ``unconfirmed`` and are never
        sent again automatically; those never handed over are returned."""
        now = utcnow()
        in_batch = and_(sent_contacts.c.run_id == run_id, sent_contacts.c.batch_no == batch_no)
        with self.engine.begin() as conn:
            if not resend_unconfirmed:
                self._mark_unconfirmed(conn, in_batch, now)
            started = conn.execute(
                update(sent_contacts)
                .where(in_batch, sent_contacts.c.status == CLAIMED)
                .values(
                    status=SENDING,
                    attempts=sent_contacts.c.attempts + 1,
                    claim_attempts=sent_contacts.c.claim_attempts + 1,
                    updated_at=now,
                )
                .returning(sent_contacts.c.email, sent_contacts.c.attempts)
            ).all()
            bulk.load_rows(  # COPY on Postgres: half the time of multi-row INSERTs for a large batch
                conn,
                send_attempts,
                ("email", "attempt", "idempotency_key", "run_id", "status", "created_at", "updated_at"),
                [
                    (email, attempt, idempotency_key(email, attempt), run_id, PENDING, now, now)
                    for email, attempt in started
                ],
            )
            rows = conn.execute(
                select(sent_contacts.c.email, sent_contacts.c.name, sent_contacts.c.attempts)
                .select_from(sent_contacts.join(send_attempts, _latest_attempt()))
                .where(in_batch, sent_contacts.c.status == SENDING)
                .where(send_attempts.c.status.in_(UNRECORDED_ATTEMPT_STATES))  # not those already accepted
                .order_by(sent_contacts.c.email)
            ).all()
        return [OutgoingAttempt(email, name, attempt) for email, name, attempt in rows]

    @staticmethod
    def _mark_unconfirmed(conn, in_batch, now: datetime) -> None:
        """sending -> unconfirmed, for attempts dispatched earlier whose fate the transport cannot tell."""
        dispatched = exists().where(
            send_attempts.c.email == sent_contacts.c.email,
            send_attempts.c.attempt == sent_contacts.c.attempts,
            send_attempts.c.status == DISPATCHED,
        )
        parked = conn.execute(
            update(sent_contacts)
            .where(in_batch, sent_contacts.c.status == SENDING, dispatched)
            .values(status=UNCONFIRMED, updated_at=now)
            .returning(sent_contacts.c.email, sent_contacts.c.attempts)
        ).all()
        bulk.update_rows(
            conn,
            send_attempts,
            [{"email": email, "attempt": attempt, "status": UNCONFIRMED} for email, attempt in parked],
            match={"email": "email", "attempt": "attempt"},
            assign={"status": "status"},
            guards={"status": DISPATCHED},
            constants={"updated_at": now},
        )

    def mark_dispatched(self, run_id: str, attempts: Sequence[OutgoingAttempt]) -> None:
        """pending -> dispatched, just before these attempts go to a transport without idempotency: from
        here on, a failure without a reply leaves them unconfirmed instead of resending them.

        All or nothing, and only while the run still holds them: raises ContactsTakenOver (and changes
        nothing) when another run has taken any of them over (this run's lease expired): through such a
        transport the taker sends them, and sending them here too would email them twice."""
        with self.engine.begin() as conn:
            marked = move_attempts(conn, run_id, attempts, PENDING, DISPATCHED)
            if marked != len(attempts):  # raised inside the transaction: it rolls back
                raise ContactsTakenOver(
                    f"run {run_id} no longer holds {len(attempts) - marked} of these {len(attempts)} attempts "
                    "(its lease expired and another run took the contacts over): none of them is sent by it"
                )

    def mark_unconfirmed(self, run_id: str, attempts: Sequence[OutgoingAttempt]) -> None:
        """These dispatched attempts went to a transport without idempotency and no reply came back (SMTP:
        the connection died after the data): sending -> unconfirmed at once, by the rule a retried task
        applies (``start_attempts``), instead of waiting for that retry."""
        if not attempts:
            return
        with self.engine.begin() as conn:
            for chunk in _chunks([a.email for a in attempts], MATCH_CHUNK):
                self._mark_unconfirmed(
                    conn, and_(sent_contacts.c.run_id == run_id, sent_contacts.c.email.in_(chunk)), utcnow()
                )

    def record_sent(self, run_id: str, accepted: Sequence[AcceptedAttempt]) -> None:
        """The provider accepted (or refused) these attempts: the attempt becomes sent, its contact stays
        sending (shown as sent); a refused attempt becomes refused and its contact bounced. Outcome events
        that arrived before this (kept in the inbox) are applied right after."""
        if not accepted:
            return
        rows = [
            {
                "email": a.email,
                "attempt": a.attempt,
                "message_id": a.message_id,
                "error": a.error,
                "attempt_status": SENT if a.message_id else REFUSED,
            }
            for a in accepted
        ]
        now = utcnow()
        with self.engine.begin() as conn:
            # Every contact of the chunk is locked first, in key order, though only refused ones change (a
            # lock writes no row version): the inbox's events applied below, a take-over moving these
            # attempts, and record_outcomes all take a contact before its attempt.
            _lock_contacts(conn, sorted(a.email for a in accepted))
            bulk.update_rows(
                conn,
                sent_contacts,
                [{**row, "contact_status": BOUNCED} for row in rows if row["message_id"] is None],
                match={"email": "email", "attempts": "attempt"},
                assign={"status": "contact_status"},
                guards={"run_id": run_id, "status": SENDING},
                constants={"updated_at": now},
            )
            bulk.update_rows(
                conn,
                send_attempts,
                rows,
                match={"email": "email", "attempt": "attempt"},
                assign={"status": "attempt_status", "provider_message_id": "message_id", "error": "error"},
                # By its run too, as the contact: a run that lost the contact (taken over) must not record
                # the attempt ahead of its contact, or an outcome would later find the attempt settled and
                # the contact not (the taker sends it again with the same key and records it).
                guards={"run_id": run_id, "status": UNRECORDED_ATTEMPT_STATES},
                constants={"updated_at": now},
            )
            if conn.execute(select(exists().select_from(outcome_inbox))).scalar():
                self._apply_inbox(conn, accepted, now)

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
                .select_from(sent_contacts.join(send_attempts, _latest_attempt()))
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
                chunk_applied, chunk_unchanged, chunk_unmatched = self._apply(conn, chunk, now)
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

    def _apply_inbox(self, conn, accepted: Sequence[AcceptedAttempt], now: datetime) -> None:
        """Apply the inbox's events for these attempts (by message id or by idempotency key), whose send
        was just recorded, and remove those applied. An event whose attempt this run could not record (a
        taker holds it now) stays, for the taker's record_sent."""
        for chunk in _chunks([a for a in accepted if a.message_id], MATCH_CHUNK):
            waiting = conn.execute(
                select(outcome_inbox).where(
                    or_(
                        outcome_inbox.c.provider_message_id.in_([a.message_id for a in chunk]),
                        outcome_inbox.c.idempotency_key.in_([idempotency_key(a.email, a.attempt) for a in chunk]),
                    )
                )
            ).all()
            if not waiting:
                continue
            events = [
                OutcomeEvent(r.outcome, r.provider_message_id, r.idempotency_key, r.source, r.detail) for r in waiting
            ]
            _, _, unmatched = self._apply(conn, events, now)
            still_waiting = set(unmatched)
            applied = [r.id for r, event in zip(waiting, events, strict=True) if event not in still_waiting]
            conn.execute(delete(outcome_inbox).where(outcome_inbox.c.id.in_(applied)))

    def _apply(self, conn, events: list[OutcomeEvent], now: datetime) -> tuple[int, int, list[OutcomeEvent]]:
        """The rules of record_outcomes, inside the caller's transaction. Returns (applied, unchanged,
        events that matched no recorded send)."""
        found = self._find_attempts(conn, events)
        strongest: dict[tuple[str, int], str] = {}  # per attempt, the strongest outcome among the events
        unmatched = []
        for event in events:
            row = _attempt_of(found, event)
            if row is None or row.status in UNRECORDED_ATTEMPT_STATES:
                unmatched.append(event)
                continue
            if _already_applied(row.status, event.outcome):
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
            if _contact_follows(current, row.contact_attempts, attempt, outcome):
                contact_updates[email] = {"email": email, "status": outcome, "old": row.contact_status}
        # Each update is guarded by the state read above (rows are locked on Postgres, the database on
        # SQLite): nothing changes between the read and the write.
        for old_status in {u["old"] for u in attempt_updates}:
            bulk.update_rows(
                conn,
                send_attempts,
                [u for u in attempt_updates if u["old"] == old_status],
                match={"email": "email", "attempt": "attempt"},
                assign={"status": "status"},
                guards={"status": old_status},
                constants={"updated_at": now},
            )
        for old_status in {u["old"] for u in contact_updates.values()}:
            bulk.update_rows(
                conn,
                sent_contacts,
                [u for u in contact_updates.values() if u["old"] == old_status],
                match={"email": "email"},
                assign={"status": "status"},
                guards={"status": old_status},
                constants={"updated_at": now},
            )
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
        lookups = (
            ("provider_message_id", sorted({e.provider_message_id for e in events if e.provider_message_id})),
            ("idempotency_key", sorted({e.idempotency_key for e in events if e.idempotency_key})),
        )
        rows = []
        if bulk.is_postgres(conn):
            # First which attempts (no locks; each id an index probe), then lock those that an event may
            # change, and their contacts, through the primary keys in key order, and read their state under
            # the locks. An event its attempt already has (a webhook's duplicate, a lookup after the push)
            # locks nothing: an attempt's outcome only ever gets stronger, and its contact's effect was
            # written with it, so it stays a no-op under the lock too.
            probed = []
            for column, values in lookups:
                for chunk in _chunks(values, MATCH_CHUNK):
                    probe = bulk.probe(send_attempts, column, chunk, columns[:5])
                    probed.extend(_FoundAttempt(*row) for row in conn.execute(probe).all())
            keys, settled = set(), {}
            probed_by = _by_message(probed)
            for event in events:
                row = _attempt_of(probed_by, event)
                if row is None:
                    continue
                if _already_applied(row.status, event.outcome):
                    settled[row.email, row.attempt] = row
                else:
                    keys.add((row.email, row.attempt))
            # Contacts first, then their attempts, as every other writer (claim, record_sent, the take-over)
            # takes them: locking an attempt before its contact could close a cycle with one of those.
            _lock_contacts(conn, sorted({email for email, _ in keys}))
            for chunk in _chunks(sorted(keys), MATCH_CHUNK):
                # Each attempt a lookup of its own, locked in the keys' order (joined as a whole, a
                # 1,000-attempt lock of a 100k-row ledger without fresh statistics was a hash join over
                # seq scans, 40 ms)
                lock = bulk.probe(send_attempts, ("email", "attempt"), chunk, columns, source=joined, lock=True)
                rows.extend(_FoundAttempt(*row) for row in conn.execute(lock).all())
            rows.extend(row for key, row in settled.items() if key not in keys)
        else:
            for column, values in lookups:
                for chunk in _chunks(values, MATCH_CHUNK):
                    found = conn.execute(select(*columns).select_from(joined).where(send_attempts.c[column].in_(chunk)))
                    rows.extend(_FoundAttempt(*row) for row in found.all())
        return _by_message(rows)

    def unsubscribe(self, email: str) -> bool:
        """The person asked never to be emailed again (RFC 8058 one-click): the contact becomes
        ``unsubscribed``, final, whatever its state and whichever run holds it (a run's in-flight message
        still gets its outcome recorded, but is never resent). An address the ledger does not know is
        recorded as unsubscribed, so no run ever claims it. Idempotent: returns whether anything changed."""
        row = {"email": email, "name": "", "attempts": 0, "claim_attempts": 0, "run_id": UNSUBSCRIBE_OWNER}
        with self.engine.begin() as conn:
            return bool(_set_final_status(conn, [row], UNSUBSCRIBED, utcnow()))

    # -- resending and closing ----------------------------------------------------------------------
    def count_resendable(self, run_id: str, max_attempts: int) -> int:
        with self.engine.connect() as conn:
            return conn.execute(
                select(func.count()).select_from(sent_contacts).where(self._resendable(run_id, max_attempts))
            ).scalar_one()

    def earliest_resendable(self, run_id: str, max_attempts: int) -> datetime | None:
        """When the longest-waiting blocked contact with attempts left was reported blocked (None: none is)."""
        with self.engine.connect() as conn:
            return conn.execute(
                select(func.min(sent_contacts.c.updated_at)).where(self._resendable(run_id, max_attempts))
            ).scalar_one()

    def count_awaiting_outcome(self, run_id: str) -> int:
        """The run's messages that were accepted and have no outcome yet."""
        with self.engine.connect() as conn:
            return _sending_split(conn, run_id)[SENT]

    def count_in_flight(self, run_id: str) -> int:
        """The run's contacts with a message on its way: claimed or sending (sent included)."""
        with self.engine.connect() as conn:
            return conn.execute(
                select(func.count())
                .select_from(sent_contacts)
                .where(sent_contacts.c.run_id == run_id, sent_contacts.c.status.in_((CLAIMED, SENDING)))
            ).scalar_one()

    def requeue_blocked(
        self, run_id: str, max_attempts: int, blocked_before: datetime, batch_size: int, max_batches: int
    ) -> list[int]:
        """blocked contacts with attempts left, blocked before ``blocked_before`` (their backoff is over)
        -> claimed, numbered into batches for a new attempt."""
        with self.engine.begin() as conn:
            conn.execute(
                update(sent_contacts)
                .where(self._resendable(run_id, max_attempts), sent_contacts.c.updated_at <= blocked_before)
                .values(status=CLAIMED, updated_at=utcnow())
            )
            _, _, batches = self._number_batches(conn, run_id, batch_size, max_batches)
        return batches

    def close_out(self, run_id: str, max_attempts: int) -> int:
        """blocked contacts that used up their attempts -> failed. Returns how many."""
        with self.engine.begin() as conn:
            return conn.execute(
                update(sent_contacts)
                .where(
                    sent_contacts.c.run_id == run_id,
                    sent_contacts.c.status == BLOCKED,
                    sent_contacts.c.claim_attempts >= max_attempts,
                )
                .values(status=FAILED, updated_at=utcnow())
            ).rowcount

    @staticmethod
    def _resendable(run_id: str, max_attempts: int):
        return and_(
            sent_contacts.c.run_id == run_id,
            sent_contacts.c.status == BLOCKED,
            sent_contacts.c.claim_attempts < max_attempts,
        )

    # -- reporting ----------------------------------------------------------------------------------
    def run_summary(self, run_id: str) -> dict:
        """Counts of the run's contacts by status, and a histogram of attempts per contact."""
        owned = sent_contacts.c.run_id == run_id
        with self.engine.connect() as conn:
            by_status = dict(
                conn.execute(
                    select(sent_contacts.c.status, func.count()).where(owned).group_by(sent_contacts.c.status)
                ).all()
            )
            if by_status.pop(SENDING, 0):  # shown as sending (not accepted yet) and sent (accepted)
                by_status.update({state: n for state, n in _sending_split(conn, run_id).items() if n})
            histogram = dict(
                conn.execute(
                    select(sent_contacts.c.claim_attempts, func.count())
                    .where(owned)
                    .group_by(sent_contacts.c.claim_attempts)
                    .order_by(sent_contacts.c.claim_attempts)
                ).all()
            )
            # Not the pending ones: claim records a first attempt before any send, and a contact suppressed
            # before its batch went out keeps its attempt unsent.
            messages, recipients = conn.execute(
                select(func.count(), func.count(send_attempts.c.email.distinct())).where(
                    send_attempts.c.run_id == run_id, send_attempts.c.status != PENDING
                )
            ).one()
        return {
            "by_status": by_status,
            "attempts_histogram": histogram,
            "messages_sent": messages,
            "resent_after_block": messages - recipients,  # every message after a contact's first in this run
        }

    # -- operator actions (welcome_mailer.operations: the UI and the CLI) --------------------------
    # Each changes the ledger and writes its audit row (``audit``: actor, action, reason, detail) in one
    # transaction.
    def suppress(self, emails: Sequence[str], audit: dict) -> int:
        """Never email these (normalised) addresses: any state -> suppressed; an address never seen gets a
        suppressed row. An attempt already handed to the provider is not recalled. Returns how many changed."""
        now = utcnow()
        changed = 0
        with self.engine.begin() as conn:
            for chunk in _chunks(sorted(set(emails)), MATCH_CHUNK):
                new = {"name": "", "attempts": 0, "claim_attempts": 0, "run_id": OPERATOR_RUN_ID}
                changed += _set_final_status(conn, [{"email": email, **new} for email in chunk], SUPPRESSED, now)
                _audit(conn, now, audit, chunk)
        return changed

    def release(self, email: str, audit: dict) -> bool:
        """A failed contact becomes due at once: the next run that lists it retries it, with a fresh
        attempt budget, whatever its retry_failed_after_hours. False if it is not failed."""
        now = utcnow()
        with self.engine.begin() as conn:
            released = conn.execute(
                update(sent_contacts)
                .where(sent_contacts.c.email == email, sent_contacts.c.status == FAILED)
                .values(updated_at=RELEASED_AT)
            ).rowcount
            if released:
                _audit(conn, now, audit, [email])
        return bool(released)

    def erase(self, email: str, audit: dict) -> dict[str, int]:
        """GDPR art. 17: delete the address and name from every table, keep its keyed hash (claim skips it
        for ever) and the audit trail under that hash. Returns the rows deleted per table."""
        if self.erase_key is None:
            raise EraseKeyMissing("erasing needs WELCOME_MAILER_ERASE_KEY (a secret; the same in every component)")
        digest = erased_hash(self.erase_key, email)
        now = utcnow()
        deleted = {}
        with self.engine.begin() as conn:
            conn.execute(
                bulk.dialect_insert(conn, erased_contacts)
                .values(email_hash=digest, erased_at=now)
                .on_conflict_do_nothing()
            )
            attempts = conn.execute(
                select(send_attempts.c.provider_message_id, send_attempts.c.idempotency_key).where(
                    send_attempts.c.email == email
                )
            ).all()
            ids = [r.provider_message_id for r in attempts if r.provider_message_id]
            keys = [r.idempotency_key for r in attempts]
            # The contact first, then its attempts, then their inbox events: the order record_sent takes them.
            for table in (sent_contacts, send_attempts, staged_contacts):
                deleted[table.name] = conn.execute(delete(table).where(table.c.email == email)).rowcount
            deleted["outcome_inbox"] = conn.execute(
                delete(outcome_inbox).where(
                    or_(outcome_inbox.c.provider_message_id.in_(ids), outcome_inbox.c.idempotency_key.in_(keys))
                )
            ).rowcount
            conn.execute(
                update(operator_actions).where(operator_actions.c.email == email).values(email=None, email_hash=digest)
            )
            _audit(conn, now, audit, [None], email_hash=digest)
        return deleted


def move_attempts(conn, run_id: str, attempts: Sequence[OutgoingAttempt], old: str, new: str) -> int:
    """These attempts of the run go from state ``old`` to ``new`` (those still in ``old``); returns how many."""
    return bulk.update_rows(
        conn,
        send_attempts,
        [{"email": a.email, "attempt": a.attempt, "status": new} for a in attempts],
        match={"email": "email", "attempt": "attempt"},
        assign={"status": "status"},
        guards={"run_id": run_id, "status": old},
        constants={"updated_at": utcnow()},
    )


def _latest_attempt():
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
    return sent_contacts.outerjoin(send_attempts, _latest_attempt())


def _unaccepted(run_id: str):
    """The run's sending contacts whose latest attempt the provider has not accepted yet (pending,
    dispatched), found from the attempts' partial index of those without a provider message id
    (``ix_send_attempts_unaccepted``: it holds what is still owed, not every message): such an attempt
    always belongs to its contact's run (claim and start_attempts record it for their run, a take-over
    moves it to the taker), and has no message id until record_sent gives it one.

    Each attempt's contact is checked by its primary key, one probe per attempt, whatever the statistics:
    a correlated IN (unlike a join or EXISTS, which Postgres plans as a join) is a subquery run per
    attempt, and its only condition, the email, leaves the primary key as its only index. As a join, on a
    claim's just-inserted rows that were never analysed, each attempt scanned the run's contacts through
    their (run, state) index: 30k contacts counted in 39 s, and four overlapping 250k-contact claims
    stalled for minutes."""
    contact = select(sent_contacts.c.run_id, sent_contacts.c.status, sent_contacts.c.attempts).where(
        sent_contacts.c.email == send_attempts.c.email
    )
    return (
        select(send_attempts.c.email)
        .where(send_attempts.c.run_id == run_id, send_attempts.c.provider_message_id.is_(None))
        .where(send_attempts.c.status.in_(UNRECORDED_ATTEMPT_STATES))
        .where(tuple_(literal(run_id), literal(SENDING), send_attempts.c.attempt).in_(contact))
    )


def _due(run_id: str):
    """The run's contacts with a message due: claimed (a new attempt is due), or sending with their latest
    attempt not accepted yet (a send task's, or a crashed one's, to send with the same key)."""
    claimed = select(sent_contacts.c.email).where(sent_contacts.c.run_id == run_id, sent_contacts.c.status == CLAIMED)
    return claimed.union_all(_unaccepted(run_id))


def _sending_split(conn, run_id: str) -> dict[str, int]:
    """The run's sending contacts, as shown: {sending: latest attempt not accepted yet, sent: accepted,
    waiting for its outcome}. A sending contact's latest attempt is one or the other (its outcome moves
    the contact on), so sent is the difference of two index counts, not a join over every sent message."""
    sending, unaccepted = conn.execute(
        select(
            select(func.count())
            .where(sent_contacts.c.run_id == run_id, sent_contacts.c.status == SENDING)
            .scalar_subquery(),
            select(func.count()).select_from(_unaccepted(run_id).subquery()).scalar_subquery(),
        )
    ).one()
    return {SENDING: unaccepted, SENT: sending - unaccepted}


def _lock_contacts(conn, emails: Sequence[str]) -> None:
    """Postgres: lock these contacts (sorted) in key order, as every writer that takes a contact and its
    attempts does first. SQLite: one writer holds the database."""
    if not bulk.is_postgres(conn):
        return
    for chunk in _chunks(emails, MATCH_CHUNK):
        conn.execute(bulk.probe(sent_contacts, "email", chunk, [sent_contacts.c.email], lock=True)).all()


def _set_final_status(conn, new_rows: list[dict], status: str, now: datetime) -> int:
    """The contacts become ``status`` (unsubscribed, suppressed) whatever their state; an address the ledger
    does not know gets a row (``new_rows``: its columns) in that state, so no run ever claims it. One upsert:
    a contact that a concurrent claim is inserting is waited for, then changed (an UPDATE first would find
    no row yet, and an insert that skips conflicts would then skip it: emailed once). Returns how many
    rows changed."""
    rows = [{**row, "status": status, "created_at": now, "updated_at": now} for row in new_rows]
    insert = bulk.dialect_insert(conn, sent_contacts).values(rows)
    return conn.execute(
        insert.on_conflict_do_update(
            index_elements=[sent_contacts.c.email],
            set_={"status": status, "updated_at": now},
            where=sent_contacts.c.status != status,
        )
    ).rowcount


def _audit(conn, now: datetime, audit: dict, emails: Sequence[str | None], email_hash: str | None = None) -> None:
    conn.execute(
        operator_actions.insert(),
        [{"at": now, "email": email, "email_hash": email_hash, "detail": None, **audit} for email in emails],
    )


class _FoundAttempt(NamedTuple):
    """An attempt an outcome event names, as ``_find_attempts`` reads it: a plain tuple (reading a Row's
    attributes took a sixth of the time of recording 100k outcomes on SQLite)."""

    email: str
    attempt: int
    status: str
    provider_message_id: str | None
    idempotency_key: str
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


def _already_applied(attempt_status: str, outcome: str) -> bool:
    """An event no stronger than what its recorded attempt already has was applied before, with its effect
    on the contact (in the same transaction): it changes nothing. Never for an attempt whose send is not
    recorded yet (its events wait in the inbox)."""
    if attempt_status in UNRECORDED_ATTEMPT_STATES:
        return False
    return STRENGTH[outcome] <= ATTEMPT_STRENGTH.get(attempt_status, 0)


def _contact_follows(contact_status: str, contact_attempt: int, attempt: int, outcome: str) -> bool:
    """Whether a message's outcome changes its contact's state (see record_outcomes)."""
    if outcome == BLOCKED:  # an event only ever applies to an accepted attempt: sending means sent here
        return attempt == contact_attempt and contact_status in (SENDING, UNCONFIRMED)
    current = CONTACT_STRENGTH[contact_status] if contact_status in FINAL_STATES else 0
    return STRENGTH[outcome] > current


def _chunks(items: Sequence, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]
