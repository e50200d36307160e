"""THE mapping table: what each provider's event means for the ledger. docs/provider-events.md explains
every row.

Keys are (provider, event, kind); kind ``*`` matches any subtype. An event no row names is ignored
(opens, clicks, "processed", ...): it changes nothing, and is counted as ignored in ``provider_events``.
``None`` as outcome says the same explicitly: the provider is still retrying (deferred, delivery delay,
a temporary failure) or the event says nothing about delivery.
"""

from __future__ import annotations

from welcome_mailer.outcomes.webhooks import Signal
from welcome_mailer.vocabulary import BLOCKED, BOUNCED, COMPLAINED, DELIVERED, OutcomeEvent

IGNORED = None

MAPPING: dict[tuple[str, str, str], str | None] = {
    # Amazon SES (event publishing "eventType" and identity notifications "notificationType" alike)
    ("ses", "Delivery", "*"): DELIVERED,
    ("ses", "Bounce", "Permanent"): BOUNCED,
    ("ses", "Bounce", "Transient"): BLOCKED,
    ("ses", "Bounce", "Undetermined"): BOUNCED,
    ("ses", "Complaint", "*"): COMPLAINED,
    ("ses", "Complaint", "not-spam"): IGNORED,
    ("ses", "Reject", "*"): BOUNCED,
    ("ses", "DeliveryDelay", "*"): IGNORED,
    # SendGrid Event Webhook
    ("sendgrid", "delivered", "*"): DELIVERED,
    ("sendgrid", "bounce", "bounce"): BOUNCED,
    ("sendgrid", "bounce", "blocked"): BLOCKED,
    ("sendgrid", "bounce", "*"): BOUNCED,  # older payloads carry no type: a bounce
    ("sendgrid", "dropped", "*"): BOUNCED,
    ("sendgrid", "spamreport", "*"): COMPLAINED,
    ("sendgrid", "deferred", "*"): IGNORED,
    # Postmark (RecordType, and a Bounce's Type)
    ("postmark", "Delivery", "*"): DELIVERED,
    ("postmark", "Bounce", "HardBounce"): BOUNCED,
    ("postmark", "Bounce", "BadEmailAddress"): BOUNCED,
    ("postmark", "Bounce", "ManuallyDeactivated"): BOUNCED,
    ("postmark", "Bounce", "Unknown"): BOUNCED,
    ("postmark", "Bounce", "VirusNotification"): BOUNCED,
    ("postmark", "Bounce", "DMARCPolicy"): BOUNCED,
    ("postmark", "Bounce", "SoftBounce"): BLOCKED,
    ("postmark", "Bounce", "Transient"): BLOCKED,
    ("postmark", "Bounce", "DnsError"): BLOCKED,
    ("postmark", "Bounce", "Blocked"): BLOCKED,
    ("postmark", "Bounce", "SpamNotification"): BLOCKED,
    ("postmark", "Bounce", "SpamComplaint"): COMPLAINED,
    ("postmark", "Bounce", "AutoResponder"): IGNORED,
    ("postmark", "Bounce", "AddressChange"): IGNORED,
    ("postmark", "Bounce", "ChallengeVerification"): IGNORED,
    ("postmark", "SpamComplaint", "*"): COMPLAINED,
    # Mailgun (event, and a failure's severity)
    ("mailgun", "delivered", "*"): DELIVERED,
    ("mailgun", "failed", "permanent"): BOUNCED,
    ("mailgun", "failed", "permanent:old"): BLOCKED,  # Mailgun gave up retrying temporary failures
    ("mailgun", "failed", "temporary"): IGNORED,
    ("mailgun", "complained", "*"): COMPLAINED,
    # The mock ESP's push mode: its statuses are the ledger's outcomes
    ("mock", "delivered", "*"): DELIVERED,
    ("mock", "bounced", "*"): BOUNCED,
    ("mock", "blocked", "*"): BLOCKED,
    ("mock", "complained", "*"): COMPLAINED,
}


def outcome_of(signal: Signal) -> str | None:
    """The ledger outcome a provider event means, or None when it changes nothing."""
    key = (signal.provider, signal.event, signal.kind)
    if key in MAPPING:
        return MAPPING[key]
    return MAPPING.get((signal.provider, signal.event, "*"))


def to_outcome_event(signal: Signal) -> OutcomeEvent | None:
    """The outcome event for the ledger, or None when the event changes nothing or names no message."""
    outcome = outcome_of(signal)
    if outcome is None or not (signal.provider_message_id or signal.idempotency_key):
        return None
    described = " ".join(p for p in (signal.event, signal.kind, signal.detail or "") if p)
    return OutcomeEvent(
        outcome,
        provider_message_id=signal.provider_message_id,
        idempotency_key=signal.idempotency_key,
        source=f"webhook:{signal.provider}",
        detail=described[:2000],
        occurred_at=signal.occurred_at,
    )
