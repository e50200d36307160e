"""Postmark webhooks (Bounce, Delivery, SpamComplaint; one JSON object per request). Postmark signs
nothing: the webhook URL carries HTTP basic auth credentials (``https://user:password@host/...``), so
the endpoint must be served over HTTPS (a TLS proxy in front of the api-server)."""

from __future__ import annotations

import base64
import binascii

from welcome_mailer.outcomes.webhooks import (
    IDEMPOTENCY_HEADER,
    Parsed,
    Refused,
    Signal,
    WebhookProvider,
    WebhookRequest,
    check_secret,
    from_iso,
    load_json,
    text,
)
from welcome_mailer.vocabulary import METADATA_KEY

PROVIDER = "postmark"


def verify(headers, credentials: str) -> None:
    """``credentials``: ``user:password``, as configured in the webhook's URL on Postmark's side."""
    scheme, _, encoded = (headers.get("Authorization") or "").partition(" ")
    if scheme.lower() != "basic" or not encoded:
        raise Refused(401, "missing basic auth credentials")
    try:
        given = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise Refused(401, "unreadable basic auth credentials") from None
    if not check_secret(given, credentials.encode()):
        raise Refused(403, "wrong basic auth credentials")


def parse(body: bytes) -> Parsed:
    parsed = Parsed()
    event = load_json(body, parsed)
    if event is None:
        return parsed
    if not isinstance(event, dict) or not isinstance(event.get("RecordType"), str):
        parsed.unparsed.append(f"not a Postmark webhook: {str(event)[:200]}")
        return parsed
    metadata = event.get("Metadata") if isinstance(event.get("Metadata"), dict) else {}
    headers = {h.get("Name"): h.get("Value") for h in event.get("Headers") or [] if isinstance(h, dict)}
    key = metadata.get(METADATA_KEY) or headers.get(IDEMPOTENCY_HEADER)
    if not (event.get("MessageID") or key):
        parsed.unparsed.append(f"{event['RecordType']} names no message: {str(event)[:200]}")
        return parsed
    parsed.signals.append(
        Signal(
            PROVIDER,
            event["RecordType"],
            str(event.get("Type") or ""),
            provider_message_id=text(event.get("MessageID"), 100),
            idempotency_key=text(key, 100),
            detail=text(event.get("Description") or event.get("Details")),
            occurred_at=from_iso(event.get("BouncedAt") or event.get("DeliveredAt") or event.get("ReceivedAt")),
        )
    )
    return parsed


def receive(request: WebhookRequest, credentials: object) -> Parsed:
    verify(request.headers, str(credentials))
    return parse(request.body)


WEBHOOK = WebhookProvider(PROVIDER, "postmark_credentials", receive)
