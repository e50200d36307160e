"""The ledger: who was emailed, with which attempt, and what came of it. Every rule of "at most one email
per contact" is in this package, one module per concern; ``Ledger`` is the one front the DAG, the
pipeline, the web app and the CLI use. The state machine is written out in docs/ledger.md.

- ``rules``: the states, their strengths and the transitions
- ``claims``: a run's lease, staging its contacts and claiming them into send batches
- ``attempts``: recording each message before it is sent, and the provider's acceptance
- ``outcomes``: applying outcome events from any source, and the inbox of early ones
- ``resends``: resending blocked contacts, closing a run out, its summary
- ``operator``: unsubscribe, suppress, release, erase
- ``webhook_tokens``: signature tokens a provider's webhook already used (honoured once)
- ``queries``: SQL pieces those share; ``bulk``: set-based SQL for many rows, per backend
- ``schema``: every table; ``migrate``: their history (Alembic, ``welcome_mailer/migrations``)
- ``engine``: opening the database (URL from a connection, SQLite pragmas)
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Engine

from welcome_mailer.ledger.attempts import AcceptedAttempt, Attempts, OutgoingAttempt
from welcome_mailer.ledger.claims import ClaimResult, Claims
from welcome_mailer.ledger.engine import connect, ledger_url
from welcome_mailer.ledger.operator import OperatorActions
from welcome_mailer.ledger.outcomes import OutcomeCounts, Outcomes
from welcome_mailer.ledger.queries import shown_status, with_latest_attempt
from welcome_mailer.ledger.resends import Resends
from welcome_mailer.ledger.rules import (
    CLAIMED,
    FAILED,
    IN_FLIGHT_STATES,
    PENDING,
    REFUSED,
    SENDING,
    SENT,
    UNCONFIRMED,
    ContactsTakenOver,
    EraseKeyMissing,
)
from welcome_mailer.ledger.schema import (
    ledger_runs,
    metadata,
    outcome_inbox,
    send_attempts,
    sent_contacts,
    staged_contacts,
)
from welcome_mailer.ledger.webhook_tokens import WebhookTokens
from welcome_mailer.vocabulary import BLOCKED, BOUNCED, DELIVERED


class Ledger(Claims, Attempts, Outcomes, Resends, OperatorActions, WebhookTokens):
    """The ledger on one database: every operation of every concern, on one engine."""

    def __init__(
        self, engine: Engine, lease: timedelta = timedelta(minutes=30), erase_key: bytes | None = None
    ) -> None:
        self.engine = engine
        self.lease = lease
        self.erase_key = erase_key  # keys erased_contacts' hashes (settings: WELCOME_MAILER_ERASE_KEY)


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
    "EraseKeyMissing",
    "Ledger",
    "OutcomeCounts",
    "OutgoingAttempt",
    "connect",
    "ledger_runs",
    "ledger_url",
    "metadata",
    "outcome_inbox",
    "send_attempts",
    "sent_contacts",
    "shown_status",
    "staged_contacts",
    "with_latest_attempt",
]
