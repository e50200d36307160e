"""The ledger: who was emailed, with which attempt, and what came of it. Every rule of "at most one email
per contact" lives in this module.

Tables
- ``sent_contacts``: one row per normalised email, owned by one run at a time.
- ``send_attempts``: one row per message, written BEFORE the ESP is called, keyed by (email, attempt); the
  idempotency key sent to the ESP is derived from the same pair, so re-sending an attempt that may already
  have been accepted (a retried task, a lost response, a crash) never creates a second message.
- ``ledger_runs``: the runs that own contacts, with a lease renewed by every task of the run.
- ``staged_contacts``: a run's parsed, de-duplicated contacts, waiting to be claimed.

Contact states (``sent_contacts.status``)::

    claimed --start_attempts--> sending --record_sent--> sent --record_outcomes--> delivered | bounced | blocked
    blocked --requeue_blocked--> claimed            (a NEW attempt, while claim_attempts < max_attempts)
    blocked --close_out--> failed                   (max_attempts reached)
    failed  --claim by a later run--> claimed       (listed again, once retry_failed_after has passed)

- delivered and bounced are final: no run ever claims them again.
- ``sending`` means an attempt is recorded but the ESP's acceptance is unconfirmed; it is only ever re-sent
  with the same idempotency key.
- claimed / sending / sent / blocked contacts of a run whose lease expired (or that finished without
  closing them) are taken over by the next run that lists them, with their state and attempt as they are.
- Every write is guarded by the owning run id, so a run that lost its contacts cannot touch them.

All timestamps are naive UTC.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from operator import attrgetter

from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    and_,
    bindparam,
    case,
    create_engine,
    delete,
    event,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from welcome_mailer.contacts import Contact

SCHEMA_VERSION = 1

# Contact states
CLAIMED, SENDING, SENT = "claimed", "sending", "sent"
DELIVERED, BOUNCED, BLOCKED, FAILED = "delivered", "bounced", "blocked", "failed"
IN_FLIGHT_STATES = (CLAIMED, SENDING, SENT, BLOCKED)
# Attempt states: pending (recorded, not confirmed accepted), then sent, then the ESP's outcome;
# refused = the ESP refused the address (the contact is closed as bounced).
PENDING, REFUSED = "pending", "refused"

metadata = MetaData()

sent_contacts = Table(
    "sent_contacts",
    metadata,
    Column("email", String(320), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),  # every attempt ever; numbers the next attempt
    Column("claim_attempts", Integer, nullable=False),  # attempts under the current claim; <= max_attempts
    Column("run_id", String(250), nullable=False),  # the owning run
    Column("batch_no", Integer),
    Column("provider_message_id", String(100)),  # of the latest attempt
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    Index("ix_sent_contacts_run_status", "run_id", "status"),
    Index("ix_sent_contacts_run_batch", "run_id", "batch_no"),
)

send_attempts = Table(
    "send_attempts",
    metadata,
    Column("email", String(320), primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("idempotency_key", String(100), nullable=False, unique=True),
    Column("run_id", String(250), nullable=False),
    Column("status", String(16), nullable=False),
    Column("provider_message_id", String(100)),
    Column("error", String(500)),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    Index("ix_send_attempts_run", "run_id"),
)

ledger_runs = Table(
    "ledger_runs",
    metadata,
    Column("run_id", String(250), primary_key=True),
    Column("lease_expires_at", DateTime, nullable=False),
    Column("finished_at", DateTime),
    Column("created_at", DateTime, nullable=False),
)

staged_contacts = Table(
    "staged_contacts",
    metadata,
    Column("run_id", String(250), primary_key=True),
    Column("email", String(320), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("line_no", Integer, nullable=False),
)

# The drop folder's memory of file contents (sha256), so a file dropped again is not processed twice.
# Its rules live in welcome_mailer.dropzone.
processed_files = Table(
    "processed_files",
    metadata,
    Column("sha256", String(64), primary_key=True),
    Column("file_name", String(500), nullable=False),
    Column("status", String(16), nullable=False),  # processing | done | failed
    Column("run_id", String(250)),
    Column("updated_at", DateTime, nullable=False),
)

ledger_schema = Table("ledger_schema", metadata, Column("version", Integer, primary_key=True))


def _sqlite_value(value: object) -> object:
    """A value as SQLAlchemy stores it in SQLite (datetimes as text), for plain driver SQL."""
    return value.strftime("%Y-%m-%d %H:%M:%S.%f") if isinstance(value, datetime) else value


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def idempotency_key(email: str, attempt: int) -> str:
    """The ESP idempotency key of one attempt: stable for (email, attempt), different for every attempt."""
    digest = hashlib.sha256(email.encode()).hexdigest()[:40]
    return f"welcome-{digest}-{attempt}"


@dataclass(frozen=True)
class ClaimResult:
    staged: int  # unique valid contacts in the file
    claimed_new: int  # never seen before
    taken_over: int  # failed contacts listed again, or contacts of a dead run
    failed_recently: int  # failed contacts listed again too soon: left alone until retry_failed_after passed
    owned: int  # contacts this run is responsible for (new + taken over + already its own)
    to_send: int  # owned contacts waiting for their first message of this claim
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
    message_id: str | None  # None when the ESP refused the message
    error: str | None = None


@dataclass(frozen=True)
class PendingMessage:
    email: str
    attempt: int
    message_id: str


def connect(url: str) -> Engine:
    """An engine for the ledger database; SQLite gets WAL and IMMEDIATE transactions for safe concurrency."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_connection, _record) -> None:
            dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself, below
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(connection) -> None:
            # Take the write lock up front: two claimers never interleave, and never deadlock upgrading.
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True)


class Ledger:
    def __init__(self, engine: Engine, lease: timedelta = timedelta(minutes=30)) -> None:
        self.engine = engine
        self.lease = lease
        self._postgres = engine.dialect.name == "postgresql"

    # -- schema -------------------------------------------------------------------------------------
    def ensure_schema(self) -> None:
        """Create or migrate the schema; safe to call from every task, concurrently."""
        with self.engine.begin() as conn:
            if self._postgres:  # serialise concurrent first-time creation
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7410001)")
            metadata.create_all(conn, checkfirst=True)
            version = conn.execute(select(func.max(ledger_schema.c.version))).scalar()
            if version is None:
                conn.execute(insert(ledger_schema).values(version=SCHEMA_VERSION))
            elif version > SCHEMA_VERSION:
                raise RuntimeError(f"ledger schema v{version} is newer than this code (v{SCHEMA_VERSION})")

    # -- runs and leases ----------------------------------------------------------------------------
    def renew_lease(self, run_id: str) -> None:
        """Register the run, or extend its lease. Every task of the run calls this first."""
        now = utcnow()
        values = {"run_id": run_id, "lease_expires_at": now + self.lease, "created_at": now}
        stmt = self.dialect_insert(ledger_runs).values(**values)
        stmt = stmt.on_conflict_do_update(
            index_elements=["run_id"], set_={"lease_expires_at": values["lease_expires_at"], "finished_at": None}
        )
        with self.engine.begin() as conn:
            conn.execute(stmt)

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
        """Bulk-load one chunk of a run's contacts: COPY on Postgres, one executemany on SQLite."""
        if not contacts:
            return
        # In key order, consecutive rows land on neighbouring index pages: 900k random emails staged on
        # SQLite in 50k chunks took 6.9 s unsorted and 4.4 s sorted, the sort included.
        contacts = sorted(contacts, key=attrgetter("email"))
        with self.engine.begin() as conn:
            if self._postgres:
                buffer = io.StringIO()
                writer = csv.writer(buffer)
                writer.writerows((run_id, c.email, c.name, c.line_no) for c in contacts)
                buffer.seek(0)
                cursor = conn.connection.dbapi_connection.cursor()
                cursor.copy_expert(
                    "COPY staged_contacts (run_id, email, name, line_no) FROM STDIN WITH (FORMAT csv)", buffer
                )
            else:
                self._insert_rows(
                    conn,
                    staged_contacts,
                    ("run_id", "email", "name", "line_no"),
                    [(run_id, c.email, c.name, c.line_no) for c in contacts],
                )

    # -- claiming -----------------------------------------------------------------------------------
    def claim(
        self, run_id: str, batch_size: int, max_batches: int, retry_failed_after: timedelta = timedelta(0)
    ) -> ClaimResult:
        """Take responsibility for this run's staged contacts that nobody else has, in one transaction.

        New emails are inserted as claimed; contacts of dead runs are taken over, and so are failed contacts
        that failed at least ``retry_failed_after`` ago (blocks are temporary: retrying minutes later only
        meets the same block). The contacts to send are numbered into at most ``max_batches`` batches. Safe
        to repeat (a retried task) and safe against other runs claiming at the same time: the insert skips
        conflicts, and the take-over re-checks ownership row by row.
        """
        now = utcnow()
        staged = select(staged_contacts.c.email).where(staged_contacts.c.run_id == run_id)
        with self.engine.begin() as conn:
            staged_count = conn.execute(select(func.count()).select_from(staged.subquery())).scalar_one()
            new_rows = (
                select(
                    staged_contacts.c.email,
                    staged_contacts.c.name,
                    literal(CLAIMED),
                    literal(0),
                    literal(0),
                    literal(run_id),
                    literal(now),
                    literal(now),
                )
                .where(staged_contacts.c.run_id == run_id)
                .where(~exists().where(sent_contacts.c.email == staged_contacts.c.email))
            )
            columns = ["email", "name", "status", "attempts", "claim_attempts", "run_id", "created_at", "updated_at"]
            inserted = conn.execute(
                self.dialect_insert(sent_contacts).from_select(columns, new_rows).on_conflict_do_nothing()
            ).rowcount

            owner_alive = exists().where(
                ledger_runs.c.run_id == sent_contacts.c.run_id,
                ledger_runs.c.finished_at.is_(None),
                ledger_runs.c.lease_expires_at >= now,
            )
            relisted_failed = and_(
                sent_contacts.c.status == FAILED, sent_contacts.c.updated_at <= now - retry_failed_after
            )
            taken_over = conn.execute(
                update(sent_contacts)
                .where(sent_contacts.c.email.in_(staged))
                .where(sent_contacts.c.run_id != run_id)
                .where(or_(relisted_failed, and_(sent_contacts.c.status.in_(IN_FLIGHT_STATES), ~owner_alive)))
                .values(
                    run_id=run_id,
                    updated_at=now,
                    status=case((relisted_failed, CLAIMED), else_=sent_contacts.c.status),
                    claim_attempts=case((relisted_failed, 0), else_=sent_contacts.c.claim_attempts),
                )
            ).rowcount

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
            to_send, size, batches = self._number_batches(conn, run_id, (CLAIMED, SENDING), batch_size, max_batches)
        return ClaimResult(
            staged_count, inserted, taken_over, failed_recently, owned, to_send, size, batches, held, held_until
        )

    def _number_batches(
        self, conn, run_id: str, states: Sequence[str], batch_size: int, max_batches: int
    ) -> tuple[int, int, list[int]]:
        selected = and_(sent_contacts.c.run_id == run_id, sent_contacts.c.status.in_(states))
        count = conn.execute(select(func.count()).select_from(sent_contacts).where(selected)).scalar_one()
        if count == 0:
            return 0, batch_size, []
        size = max(batch_size, math.ceil(count / max_batches))
        numbered = (
            select(
                sent_contacts.c.email,
                ((func.row_number().over(order_by=sent_contacts.c.email) - 1) // size).label("batch_no"),
            )
            .where(selected)
            .subquery()
        )
        conn.execute(
            update(sent_contacts).where(sent_contacts.c.email == numbered.c.email).values(batch_no=numbered.c.batch_no)
        )
        return count, size, list(range(math.ceil(count / size)))

    # -- sending ------------------------------------------------------------------------------------
    def start_attempts(self, run_id: str, batch_no: int) -> list[OutgoingAttempt]:
        """Record a new attempt for every claimed contact of the batch, then return every attempt of the
        batch that is recorded but not confirmed (including ones an earlier try of this task recorded)."""
        now = utcnow()
        in_batch = and_(sent_contacts.c.run_id == run_id, sent_contacts.c.batch_no == batch_no)
        with self.engine.begin() as conn:
            started = conn.execute(
                update(sent_contacts)
                .where(in_batch, sent_contacts.c.status == CLAIMED)
                .values(
                    status=SENDING,
                    attempts=sent_contacts.c.attempts + 1,
                    claim_attempts=sent_contacts.c.claim_attempts + 1,
                    provider_message_id=None,
                    updated_at=now,
                )
                .returning(sent_contacts.c.email, sent_contacts.c.attempts)
            ).all()
            self._insert_rows(
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
                .where(in_batch, sent_contacts.c.status == SENDING)
                .order_by(sent_contacts.c.email)
            ).all()
        return [OutgoingAttempt(email, name, attempt) for email, name, attempt in rows]

    def record_sent(self, run_id: str, accepted: Sequence[AcceptedAttempt]) -> None:
        """The ESP accepted (or refused) these attempts: sending -> sent (or bounced when refused)."""
        rows = [
            {
                "email": a.email,
                "attempt": a.attempt,
                "message_id": a.message_id,
                "error": a.error,
                "contact_status": SENT if a.message_id else BOUNCED,
                "attempt_status": SENT if a.message_id else REFUSED,
            }
            for a in accepted
        ]
        self._advance_attempts(
            run_id,
            rows,
            contact_from=SENDING,
            contact_set={"status": "contact_status", "provider_message_id": "message_id"},
            attempt_from=PENDING,
            attempt_set={"status": "attempt_status", "provider_message_id": "message_id", "error": "error"},
        )

    # -- outcomes -----------------------------------------------------------------------------------
    def pending_messages(self, run_id: str) -> list[PendingMessage]:
        """The run's messages that the ESP accepted but has not yet reported an outcome for."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(sent_contacts.c.email, sent_contacts.c.attempts, sent_contacts.c.provider_message_id).where(
                    sent_contacts.c.run_id == run_id, sent_contacts.c.status == SENT
                )
            ).all()
        return [PendingMessage(*row) for row in rows]

    def record_outcomes(self, run_id: str, outcomes: Iterable[tuple[PendingMessage, str]]) -> int:
        """sent -> delivered | bounced | blocked, for the messages whose outcome the ESP reported."""
        rows = [
            {"email": m.email, "attempt": m.attempt, "status": status}
            for m, status in outcomes
            if status in (DELIVERED, BOUNCED, BLOCKED)
        ]
        self._advance_attempts(
            run_id,
            rows,
            contact_from=SENT,
            contact_set={"status": "status"},
            attempt_from=SENT,
            attempt_set={"status": "status"},
        )
        return len(rows)

    def _advance_attempts(
        self,
        run_id: str,
        rows: list[dict],
        *,
        contact_from: str,
        contact_set: dict[str, str],
        attempt_from: str,
        attempt_set: dict[str, str],
    ) -> None:
        """Move each row's attempt (email, attempt) forward in both tables, in one transaction: the contact
        only while this run owns it, its latest attempt is that one and it is in ``contact_from``; the
        attempt only while it is in ``attempt_from``. ``*_set`` map columns to row keys."""
        if not rows:
            return
        now = utcnow()
        with self.engine.begin() as conn:
            self._update_rows(
                conn,
                sent_contacts,
                rows,
                match={"email": "email", "attempts": "attempt"},
                assign=contact_set,
                guards={"run_id": run_id, "status": contact_from},
                constants={"updated_at": now},
            )
            self._update_rows(
                conn,
                send_attempts,
                rows,
                match={"email": "email", "attempt": "attempt"},
                assign=attempt_set,
                guards={"status": attempt_from},
                constants={"updated_at": now},
            )

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

    def count_in_flight(self, run_id: str) -> int:
        """The run's contacts with a message on its way: claimed, sending or sent."""
        with self.engine.connect() as conn:
            return conn.execute(
                select(func.count())
                .select_from(sent_contacts)
                .where(sent_contacts.c.run_id == run_id, sent_contacts.c.status.in_((CLAIMED, SENDING, SENT)))
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
            _, _, batches = self._number_batches(conn, run_id, (CLAIMED, SENDING), batch_size, max_batches)
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
            histogram = dict(
                conn.execute(
                    select(sent_contacts.c.claim_attempts, func.count())
                    .where(owned)
                    .group_by(sent_contacts.c.claim_attempts)
                    .order_by(sent_contacts.c.claim_attempts)
                ).all()
            )
            messages, recipients = conn.execute(
                select(func.count(), func.count(send_attempts.c.email.distinct())).where(
                    send_attempts.c.run_id == run_id
                )
            ).one()
        return {
            "by_status": by_status,
            "attempts_histogram": histogram,
            "messages_sent": messages,
            "resent_after_block": messages - recipients,  # every message after a contact's first in this run
        }

    # -- helpers ------------------------------------------------------------------------------------
    def _insert_rows(self, conn, table: Table, columns: Sequence[str], rows: list[tuple]) -> None:
        """INSERT many rows: SQLite gets one executemany of plain SQL (SQLAlchemy's per-row parameter
        processing cost more than SQLite's own work), Postgres SQLAlchemy's multi-row VALUES batches."""
        if not rows:
            return
        if self._postgres:
            conn.execute(insert(table), [dict(zip(columns, row, strict=True)) for row in rows])
            return
        # Only tables with datetime columns need their values converted (staging, the big insert, has none).
        has_datetimes = any(isinstance(table.c[name].type, DateTime) for name in columns)
        conn.exec_driver_sql(
            f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
            [tuple(map(_sqlite_value, row)) for row in rows] if has_datetimes else rows,
        )

    def _update_rows(
        self,
        conn,
        table: Table,
        rows: list[dict],
        *,
        match: dict[str, str],
        assign: dict[str, str],
        guards: dict[str, object],
        constants: dict[str, object],
    ) -> None:
        """For every row: UPDATE table SET column = row[key] (assign) and column = value (constants)
        WHERE column = row[key] (match) AND column = value (guards).

        Postgres: one set-based UPDATE ... FROM unnest(arrays), since an executemany costs a round trip per
        row (25x slower, measured). SQLite: one executemany of plain SQL, cheap in-process (as in
        ``_insert_rows``)."""
        if not self._postgres:
            sets = [*(f"{col} = ?" for col in assign), *(f"{col} = ?" for col in constants)]
            conditions = [*(f"{col} = ?" for col in match), *(f"{col} = ?" for col in guards)]
            fixed_sets = tuple(_sqlite_value(v) for v in constants.values())
            fixed_conditions = tuple(_sqlite_value(v) for v in guards.values())
            conn.exec_driver_sql(
                f"UPDATE {table.name} SET {', '.join(sets)} WHERE {' AND '.join(conditions)}",
                [
                    (
                        *(row[k] for k in assign.values()),
                        *fixed_sets,
                        *(row[k] for k in match.values()),
                        *fixed_conditions,
                    )
                    for row in rows
                ],
            )
            return
        # One statement for all rows, whatever their number: chunked updates each re-scanned the run's
        # in-flight rows (the planner hash-joins), which grew quadratically with the run's size.
        keys = list(dict.fromkeys([*match.values(), *assign.values()]))
        column_of = {key: col for col, key in (*match.items(), *assign.items())}
        arrays = [
            bindparam(f"a_{key}", [row[key] for row in rows], type_=postgresql.ARRAY(table.c[column_of[key]].type))
            for key in keys
        ]
        given = func.unnest(*arrays).table_valued(*keys).render_derived(name="given")
        conn.execute(
            update(table)
            .where(
                *(table.c[col] == given.c[key] for col, key in match.items()),
                *(table.c[col] == value for col, value in guards.items()),
            )
            .values({**{col: given.c[key] for col, key in assign.items()}, **constants})
        )

    def dialect_insert(self, table: Table):
        """INSERT with on_conflict_do_nothing/do_update, for the backend in use."""
        return (postgresql.insert if self._postgres else sqlite.insert)(table)
