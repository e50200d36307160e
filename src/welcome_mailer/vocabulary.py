"""What every layer of the package says the same way: the outcomes a provider can report, the messages
waiting for one, the idempotency key that names each attempt (and how to find it again in a Message-ID),
and the clock. Pure code at the bottom of the package: it imports nothing of the package and nothing of
Airflow, and everything above it (ledger, transports, outcome sources, pipeline, web) imports from here.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

# -- outcomes -------------------------------------------------------------------------------------------
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
    key (carried as custom metadata or in the Message-ID). At least one of the two is set. The ledger
    applies them all through one operation, ``Ledger.record_outcomes``, whichever source heard them (an
    HTTP status lookup, an SMTP reply, a bounce report, a webhook)."""

    outcome: str  # delivered | bounced | blocked | complained
    provider_message_id: str | None = None
    idempotency_key: str | None = None
    source: str = "unknown"  # http_lookup, smtp_reply, dsn, webhook:<provider>, ...
    detail: str | None = None  # the provider's words, for the audit trail
    occurred_at: datetime | None = None
    # The pending message this event answers, when a source polled it from the ledger (a status lookup, a
    # settle): its state as that poll read it, which the ledger may take instead of reading it again.
    polled: PendingMessage | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {self.outcome!r}; expected one of {OUTCOMES}")
        if not (self.provider_message_id or self.idempotency_key):
            raise ValueError("an outcome event needs a provider message id or an idempotency key")


# -- the idempotency key --------------------------------------------------------------------------------
KEY_PREFIX = "welcome-"
# Its name as a provider's custom metadata: SendGrid custom/unique args, Postmark Metadata, Mailgun user
# variables, an SES message tag. Set at send (HTTP body, SMTP header), read back from webhook events.
METADATA_KEY = "welcome_idempotency_key"
# The one spelling of a key, for every reader that finds one inside other text (a Message-ID, a bounce
# report's Original-Envelope-Id): ``welcome-<first 40 hex digits of sha256(email)>-<attempt>``.
KEY_PATTERN = rf"{KEY_PREFIX}[0-9a-f]{{40}}-\d+"
# A Message-ID (and a DSN envelope id) may carry a keyed tag after the key, ``<key>.<tag>``: an outsider
# can compute a key from an address, not its tag (``message_tag``). Readers that only need the key skip it.
TAG_PATTERN = r"[0-9a-f]{16}"
TAGGED_KEY_PATTERN = rf"{KEY_PATTERN}(?:\.{TAG_PATTERN})?"
_KEY_IN_MESSAGE_ID = re.compile(rf"<?({KEY_PATTERN})(?:\.{TAG_PATTERN})?@")
_TAG_CONTEXT = b"welcome-mailer message-id tag"


def idempotency_key(email: str, attempt: int) -> str:
    """The provider idempotency key of one attempt: stable for (email, attempt), different for every attempt."""
    digest = hashlib.sha256(email.encode()).hexdigest()[:40]
    return f"{KEY_PREFIX}{digest}-{attempt}"


def tag_key(secret: bytes | None) -> bytes | None:
    """The key of Message-ID tags, derived from a deployment secret (the erase key) so that it is used for
    nothing else; None without a secret (no tags)."""
    return hmac.new(secret, _TAG_CONTEXT, hashlib.sha256).digest() if secret else None


def message_tag(key_of_tags: bytes, idempotency_key: str) -> str:
    """The keyed tag of an attempt's key: what a bounce report must quote to be believed."""
    return hmac.new(key_of_tags, idempotency_key.encode(), hashlib.sha256).hexdigest()[:16]


def split_tagged_key(tagged: str) -> tuple[str, str | None]:
    """``key.tag`` -> (key, tag); a bare key -> (key, None)."""
    key, _, tag = tagged.partition(".")
    return key, tag or None


def key_from_message_id(message_id: str | None) -> str | None:
    """The idempotency key inside a Message-ID the SMTP transport made (``<welcome-<hash>-<n>@host>``);
    None when it is not one of ours."""
    found = _KEY_IN_MESSAGE_ID.search((message_id or "").strip())
    return found.group(1) if found else None


# -- messages -------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)  # slots: a poll streams up to a run's whole size of these
class PendingMessage:
    """A message the provider accepted and has reported no outcome for yet: what outcome sources poll."""

    email: str
    attempt: int
    message_id: str
    sent_at: datetime | None = None  # when the provider accepted it (an outcome source's settle time)

    @property
    def idempotency_key(self) -> str:
        return idempotency_key(self.email, self.attempt)


# -- the clock ------------------------------------------------------------------------------------------
def utcnow() -> datetime:
    """Now, as the ledger stores every timestamp: naive UTC."""
    return datetime.now(UTC).replace(tzinfo=None)
