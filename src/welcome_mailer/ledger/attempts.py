"""Attempts: recording each message before it goes to the provider, and what the provider said on
accepting (or refusing) it. An attempt not accepted yet is only ever re-sent with the same idempotency key."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, exists, select, update

from welcome_mailer.contacts import decode_fields
from welcome_mailer.ledger import bulk
from welcome_mailer.ledger.queries import MATCH_CHUNK, chunks, latest_attempt, lock_contacts
from welcome_mailer.ledger.rules import (
    CLAIMED,
    DISPATCHED,
    PENDING,
    REFUSED,
    SENDING,
    SENT,
    UNCONFIRMED,
    UNRECORDED_ATTEMPT_STATES,
    ContactsTakenOver,
)
from welcome_mailer.ledger.schema import send_attempts, sent_contacts
from welcome_mailer.vocabulary import BOUNCED, idempotency_key, utcnow


@dataclass(frozen=True)
class OutgoingAttempt:
    email: str
    name: str
    attempt: int
    fields: dict[str, str] | None = None  # the other columns the run's template uses (start_attempts)

    @property
    def idempotency_key(self) -> str:
        return idempotency_key(self.email, self.attempt)


@dataclass(frozen=True)
class AcceptedAttempt:
    email: str
    attempt: int
    message_id: str | None  # None when the provider refused the message
    error: str | None = None


class Attempts:
    """Recording attempts and the provider's acceptance (part of ``Ledger``)."""

    # -- sending ------------------------------------------------------------------------------------
    def start_attempts(
        self, run_id: str, batch_no: int, resend_unconfirmed: bool = True, with_fields: bool = False
    ) -> list[OutgoingAttempt]:
        """Record a new attempt for every claimed contact of the batch (a resend, or a failed contact listed
        again: new contacts got theirs from ``claim``), then return every attempt of the batch that is
        recorded but not confirmed.

        Attempts an earlier try recorded (a retried task, a crashed run taken over) are returned again when
        ``resend_unconfirmed`` (the transport is idempotent: the same key cannot make a second email).
        Otherwise those that were dispatched (``mark_dispatched``) become ``unconfirmed`` and are never
        sent again automatically; those never handed over are returned. ``with_fields``: with each
        contact's fields (the run's template uses other columns than name and email)."""
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
            columns = [sent_contacts.c.email, sent_contacts.c.name, sent_contacts.c.attempts]
            rows = conn.execute(
                select(*columns, *((sent_contacts.c.fields,) if with_fields else ()))
                .select_from(sent_contacts.join(send_attempts, latest_attempt()))
                .where(in_batch, sent_contacts.c.status == SENDING)
                .where(send_attempts.c.status.in_(UNRECORDED_ATTEMPT_STATES))  # not those already accepted
                .order_by(sent_contacts.c.email)
            ).all()
        if with_fields:
            return [OutgoingAttempt(email, name, attempt, decode_fields(f)) for email, name, attempt, f in rows]
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
            marked = _move_attempts(conn, run_id, attempts, PENDING, DISPATCHED)
            if marked != len(attempts):  # raised inside the transaction: it rolls back
                raise ContactsTakenOver(
                    f"run {run_id} no longer holds {len(attempts) - marked} of these {len(attempts)} attempts "
                    "(its lease expired and another run took the contacts over): none of them is sent by it"
                )

    def hand_back(self, run_id: str, attempts: Sequence[OutgoingAttempt]) -> None:
        """dispatched -> pending: the provider throttled these attempts (it said so: nothing went out), so
        they are sent again with the same key and Message-ID, never as a new attempt, and a crash before
        that cannot park them as unconfirmed."""
        if attempts:
            with self.engine.begin() as conn:
                _move_attempts(conn, run_id, attempts, DISPATCHED, PENDING)

    def mark_unconfirmed(self, run_id: str, attempts: Sequence[OutgoingAttempt]) -> None:
        """These dispatched attempts went to a transport without idempotency and no reply came back (SMTP:
        the connection died after the data): sending -> unconfirmed at once, by the rule a retried task
        applies (``start_attempts``), instead of waiting for that retry."""
        if not attempts:
            return
        with self.engine.begin() as conn:
            for chunk in chunks([a.email for a in attempts], MATCH_CHUNK):
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
            refused = [row for row in rows if row["message_id"] is None]
            # A contact before its attempts, in key order, as every writer that takes both does (claim, a
            # take-over, record_outcomes, erase): locked here are only the contacts this transaction
            # writes, the refused (bounced) and those with events waiting. Locking every contact of the
            # chunk wrote every contact row's header for nothing (a fifth of the SQL time of a 1M run on
            # Postgres): an outcome pushed meanwhile takes its contact, then waits for the attempt updated
            # below, and reads it recorded once this commits.
            waiting = self._inbox_events_for(conn, accepted)
            lock_contacts(conn, sorted({row["email"] for row in refused} | {email for email, _ in waiting}))
            bulk.update_rows(
                conn,
                sent_contacts,
                [{**row, "contact_status": BOUNCED} for row in refused],
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
            if waiting:
                self._apply_inbox(conn, [row for _, row in waiting], now)
            postgres = bulk.is_postgres(conn)
        if postgres:  # SQLite: no other writer ran meanwhile (one holds the database)
            self._apply_inbox_late(accepted)

    def _apply_inbox_late(self, accepted: Sequence[AcceptedAttempt]) -> None:
        """Postgres: events for these attempts that came while their sends were recorded (an outcome that
        read its attempt as not recorded yet, and was kept in the inbox), applied in a transaction of their
        own. Applying them in record_sent's would take their contacts after the attempts it holds, against
        every other writer's order. Between the two a crash leaves them in the inbox, counted."""
        with self.engine.begin() as conn:
            if late := self._inbox_events_for(conn, accepted):
                self._apply_inbox(conn, [row for _, row in late], utcnow())


def _move_attempts(conn, run_id: str, attempts: Sequence[OutgoingAttempt], old: str, new: str) -> int:
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
