"""Actions from outside a run: the person's one-click unsubscribe, and the operator's suppress, release and
erase (``welcome_mailer.operator_actions`` calls them for the UI and the CLI). Each operator action changes
the ledger and writes its audit row (``audit``: actor, action, reason, detail) in one transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, or_, select, update

from welcome_mailer.ledger import bulk
from welcome_mailer.ledger.queries import MATCH_CHUNK, chunks
from welcome_mailer.ledger.rules import (
    FAILED,
    OPERATOR_RUN_ID,
    RELEASED_AT,
    SUPPRESSED,
    UNSUBSCRIBE_OWNER,
    UNSUBSCRIBED,
    EraseKeyMissing,
    erased_hash,
)
from welcome_mailer.ledger.schema import (
    erased_contacts,
    operator_actions,
    outcome_inbox,
    send_attempts,
    sent_contacts,
    staged_contacts,
)
from welcome_mailer.vocabulary import utcnow


class OperatorActions:
    """Unsubscribe, suppress, release, erase (part of ``Ledger``)."""

    def unsubscribe(self, email: str) -> bool:
        """The person asked never to be emailed again (RFC 8058 one-click): the contact becomes
        ``unsubscribed``, final, whatever its state and whichever run holds it (a run's in-flight message
        still gets its outcome recorded, but is never resent). An address the ledger does not know is
        recorded as unsubscribed, so no run ever claims it. Idempotent: returns whether anything changed."""
        row = {"email": email, "name": "", "attempts": 0, "claim_attempts": 0, "run_id": UNSUBSCRIBE_OWNER}
        with self.engine.begin() as conn:
            return bool(set_final_status(conn, [row], UNSUBSCRIBED, utcnow()))

    def suppress(self, emails: Sequence[str], audit: dict) -> int:
        """Never email these (normalised) addresses: any state -> suppressed; an address never seen gets a
        suppressed row. An attempt already handed to the provider is not recalled. Returns how many changed."""
        now = utcnow()
        changed = 0
        with self.engine.begin() as conn:
            for chunk in chunks(sorted(set(emails)), MATCH_CHUNK):
                new = {"name": "", "attempts": 0, "claim_attempts": 0, "run_id": OPERATOR_RUN_ID}
                changed += set_final_status(conn, [{"email": email, **new} for email in chunk], SUPPRESSED, now)
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


def set_final_status(conn, new_rows: list[dict], status: str, now: datetime) -> int:
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
