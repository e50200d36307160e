"""Resends and the end of a run: blocked contacts with attempts left go round again with a NEW attempt,
those out of attempts become failed; and the run's summary."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import and_, func, not_, select, update

from welcome_mailer.ledger.queries import due_batches, next_batch_no, number_batches, sending_split
from welcome_mailer.ledger.rules import CLAIMED, FAILED, PENDING, SENDING, SENT
from welcome_mailer.ledger.schema import send_attempts, sent_contacts
from welcome_mailer.vocabulary import BLOCKED, utcnow


class Resends:
    """Resending blocked contacts, closing a run out, and its summary (part of ``Ledger``)."""

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
            return sending_split(conn, run_id)[SENT]

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
        -> claimed, numbered into batches for a new attempt: numbers no sending contact of the run holds.

        A batch is read through (run_id, status, batch_no) (``start_attempts``): numbered from 0, as they
        were, every resend round's batch shared its number with the contacts of earlier rounds (and of the
        first) still waiting for their outcome, and read them all to skip them (0.2 s a round at 1M, a
        round every poll while outcomes come in)."""
        with self.engine.begin() as conn:
            # The backoff as NOT (blocked after it), not "blocked at or before it": the run's blocked
            # contacts are then found through (run_id, status), not through (run_id, updated_at), which
            # SQLite's planner (no statistics) preferred for its range: every contact of the run changed
            # before the backoff's end, read one by one (0.33 s a poke at 1M contacts). Postgres reads the
            # NOT as the <= it is.
            backoff_over = not_((sent_contacts.c.updated_at > blocked_before).self_group())
            requeued = conn.execute(
                update(sent_contacts)
                .where(self._resendable(run_id, max_attempts), backoff_over)
                .values(status=CLAIMED, updated_at=utcnow())
            ).rowcount
            if not requeued:
                # Those still due (held back by the quota, or left by a failed send) keep their numbers: a
                # new number at every poke of a quota pause rewrote every held contact each time.
                return due_batches(conn, run_id)
            _, _, batches = number_batches(
                conn, run_id, batch_size, max_batches, first_batch_no=next_batch_no(conn, run_id)
            )
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
                by_status.update({state: n for state, n in sending_split(conn, run_id).items() if n})
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
