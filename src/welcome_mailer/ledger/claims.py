"""Runs and their contacts: a run's lease, staging a file's contacts, and claiming them (new contacts,
contacts of dead runs, failed contacts listed again), numbered into send batches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from operator import attrgetter

from sqlalchemy import and_, case, delete, exists, func, literal, or_, select, text, update

from welcome_mailer.contacts import Contact, encode_fields
from welcome_mailer.ledger import bulk
from welcome_mailer.ledger.engine import bulk_write_cache
from welcome_mailer.ledger.queries import MATCH_CHUNK, batch_no_of, batch_size_for, chunks, number_batches
from welcome_mailer.ledger.rules import (
    CLAIMED,
    FAILED,
    IN_FLIGHT_STATES,
    PENDING,
    SENDING,
    UNRECORDED_ATTEMPT_STATES,
    EraseKeyMissing,
    erased_hash,
)
from welcome_mailer.ledger.schema import erased_contacts, ledger_runs, send_attempts, sent_contacts, staged_contacts
from welcome_mailer.vocabulary import idempotency_key, utcnow


def idempotency_key_sql(conn, email, attempt: int):
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


class Claims:
    """A run's lease, its staged contacts, and its claim on them (part of ``Ledger``)."""

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

    def record_source_file(self, run_id: str, source_file: str) -> None:
        """The contact list the run reads (parse records it), for pages and lookups to name."""
        with self.engine.begin() as conn:
            conn.execute(update(ledger_runs).where(ledger_runs.c.run_id == run_id).values(source_file=source_file))

    def finish_run(self, run_id: str) -> None:
        """The run is over: whatever it still holds (e.g. messages it never saw resolved) is free to take over."""
        with self.engine.begin() as conn:
            conn.execute(update(ledger_runs).where(ledger_runs.c.run_id == run_id).values(finished_at=utcnow()))
            conn.execute(delete(staged_contacts).where(staged_contacts.c.run_id == run_id))

    # -- staging ------------------------------------------------------------------------------------
    def clear_stage(self, run_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(staged_contacts).where(staged_contacts.c.run_id == run_id))

    def stage(self, run_id: str, contacts: Sequence[Contact], with_fields: bool = False) -> None:
        """Bulk-load one chunk of a run's contacts; ``with_fields``: their fields too (the run's template
        uses other columns than name and email)."""
        if not contacts:
            return
        # In key order, consecutive rows land on neighbouring index pages: faster to load, the sort
        # included, than rows in file order.
        contacts = sorted(contacts, key=attrgetter("email"))
        columns = ("run_id", "email", "name", "line_no")
        with self.engine.begin() as conn:
            if with_fields:
                rows = [(run_id, c.email, c.name, c.line_no, encode_fields(c.fields)) for c in contacts]
                bulk.load_rows(conn, staged_contacts, (*columns, "fields"), rows)
            else:
                bulk.load_rows(conn, staged_contacts, columns, [(run_id, c.email, c.name, c.line_no) for c in contacts])

    # -- claiming -----------------------------------------------------------------------------------
    def claim(
        self,
        run_id: str,
        batch_size: int,
        max_batches: int,
        retry_failed_after: timedelta = timedelta(0),
        min_batch_contacts: int = 1,
        with_fields: bool = False,
    ) -> ClaimResult:
        """Take responsibility for this run's staged contacts that nobody else has, in one transaction.

        New emails are inserted as sending, their first attempt recorded with them; contacts of dead runs
        are taken over, and so are failed contacts that failed at least ``retry_failed_after`` ago (blocks
        are temporary: retrying minutes later only meets the same block). The contacts to send are
        numbered into batches (one per send task): at most ``max_batches``, and no more than one per
        ``min_batch_contacts`` contacts. Safe to repeat (a retried task) and safe against other runs
        claiming at the same time: the insert skips conflicts, and the take-over re-checks ownership row
        by row. ``with_fields``: the run's template uses other columns of the row: each contact claimed
        keeps the staged ones (``sent_contacts.fields``) for its sends and resends.
        """
        now = utcnow()
        staged = select(staged_contacts.c.email).where(staged_contacts.c.run_id == run_id)
        with self.engine.connect() as conn, bulk_write_cache(conn), conn.begin():
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
                    # The numbers number_batches gives when every staged contact is new (a first run of a
                    # file): it then has nothing to rewrite. Otherwise it renumbers what differs.
                    batch_no_of(
                        staged_contacts.c.email,
                        batch_size_for(staged_count, batch_size, max_batches, min_batch_contacts),
                    ),
                    *((staged_contacts.c.fields,) if with_fields else ()),
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
                *(("fields",) if with_fields else ()),
            ]
            inserted = conn.execute(
                bulk.dialect_insert(conn, sent_contacts).from_select(columns, new_rows).on_conflict_do_nothing()
            ).rowcount
            if inserted:  # a retried claim inserts nothing: no need to look for contacts created now
                self._record_first_attempts(conn, run_id, now)
            # Every staged contact was new (a file's first run): none to take over, held by another run or
            # failed, and the insert numbered their batches (the statements that would find this out
            # read every staged contact again).
            all_new = inserted == staged_count
            if all_new:
                taken_over, held, held_until, owned, failed_recently = 0, 0, None, inserted, 0
            else:
                taken_over, held, held_until, owned, failed_recently = self._take_over(
                    conn, run_id, staged, now, retry_failed_after, with_fields
                )
            to_send, size, batches = number_batches(
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
    def _take_over(conn, run_id: str, staged, now: datetime, retry_failed_after: timedelta, with_fields: bool):
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

        def staged_value(column):
            return (
                select(column)
                .where(staged_contacts.c.run_id == run_id, staged_contacts.c.email == sent_contacts.c.email)
                .scalar_subquery()
            )

        # This run sends them now, with its template: the fields it uses, from its file.
        fields = {"fields": staged_value(staged_contacts.c.fields)} if with_fields else {}
        taken_over = conn.execute(
            update(sent_contacts)
            .where(sent_contacts.c.email.in_(in_key_order))
            .values(
                run_id=run_id,
                updated_at=now,
                status=case((relisted_failed, CLAIMED), else_=sent_contacts.c.status),
                claim_attempts=case((relisted_failed, 0), else_=sent_contacts.c.claim_attempts),
                source_line=staged_value(staged_contacts.c.line_no),
                **fields,
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
            idempotency_key_sql(conn, sent_contacts.c.email, 1),
            literal(run_id),
            literal(PENDING),
            literal(now),
            literal(now),
        ).where(just_inserted)
        columns = ("email", "attempt", "idempotency_key", "run_id", "status", "created_at", "updated_at")
        # No ON CONFLICT: a contact inserted just now has no attempts (a speculative insertion per row
        # would cost a third of this statement on Postgres).
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
        for chunk in chunks(dropped, MATCH_CHUNK):
            conn.execute(
                delete(staged_contacts).where(staged_contacts.c.run_id == run_id, staged_contacts.c.email.in_(chunk))
            )
