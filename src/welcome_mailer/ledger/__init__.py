"""The ledger: who was emailed, with which attempt, and what came of it.

- ``rules``: every rule of "at most one email per contact" (the ``Ledger`` and its state machine)
- ``schema``: the tables; ``migrations``: their history, applied with Alembic
- ``engine``: opening the database (URL from a connection, SQLite pragmas)
- ``bulk``: set-based SQL for many rows, per backend
"""

from welcome_mailer.ledger.engine import connect, ledger_url
from welcome_mailer.ledger.rules import (
    CLAIMED,
    FAILED,
    IN_FLIGHT_STATES,
    PENDING,
    REFUSED,
    SENDING,
    SENT,
    UNCONFIRMED,
    AcceptedAttempt,
    ClaimResult,
    ContactsTakenOver,
    Ledger,
    OutcomeCounts,
    OutgoingAttempt,
    PendingMessage,
    idempotency_key,
    shown_status,
    utcnow,
    with_latest_attempt,
)
from welcome_mailer.ledger.schema import (
    ledger_runs,
    metadata,
    outcome_inbox,
    send_attempts,
    sent_contacts,
    staged_contacts,
)
from welcome_mailer.outcomes.events import BLOCKED, BOUNCED, DELIVERED

__all__ = [
    "BLOCKED",
    "BOUNCED",
    "CLAIMED",
    "DELIVERED",
    "FAILED",
    "IN_FLIGHT_STATES",
    "PENDING",
    "REFUSED",
    "SENDING",
    "SENT",
    "UNCONFIRMED",
    "AcceptedAttempt",
    "ClaimResult",
    "ContactsTakenOver",
    "Ledger",
    "OutcomeCounts",
    "OutgoingAttempt",
    "PendingMessage",
    "connect",
    "idempotency_key",
    "ledger_runs",
    "ledger_url",
    "metadata",
    "outcome_inbox",
    "send_attempts",
    "sent_contacts",
    "shown_status",
    "staged_contacts",
    "utcnow",
    "with_latest_attempt",
]
