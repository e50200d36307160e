"""Outcome events: what a provider said became of one message, from whichever source heard it (an HTTP
status lookup, an SMTP reply, a bounce report, a webhook). The ledger applies them all through one
operation, ``Ledger.record_outcomes``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

DELIVERED, BOUNCED, BLOCKED, COMPLAINED = "delivered", "bounced", "blocked", "complained"
OUTCOMES = (DELIVERED, BOUNCED, BLOCKED, COMPLAINED)

# How strong each piece of evidence is, for one message. A weaker outcome never replaces a stronger one,
# whatever order the events arrive in: a block report is overruled by a delivery (the person got the
# email, so it must never be resent), a delivery by a later bounce (a bounce after a delivery report is
# what relays send when the final hop refuses), and anything by a complaint (the person marked the email
# as spam: whatever else was reported, they must never be emailed again).
STRENGTH = {BLOCKED: 1, DELIVERED: 2, BOUNCED: 3, COMPLAINED: 4}


@dataclass(frozen=True)
class OutcomeEvent:
    """One outcome for one message, found by the provider's message id or by the attempt's idempotency
    key (carried as custom metadata or in the Message-ID). At least one of the two is set."""

    outcome: str  # delivered | bounced | blocked | complained
    provider_message_id: str | None = None
    idempotency_key: str | None = None
    source: str = "unknown"  # http_lookup, smtp_reply, dsn, webhook:<provider>, ...
    detail: str | None = None  # the provider's words, for the audit trail
    occurred_at: datetime | None = None

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {self.outcome!r}; expected one of {OUTCOMES}")
        if not (self.provider_message_id or self.idempotency_key):
            raise ValueError("an outcome event needs a provider message id or an idempotency key")
