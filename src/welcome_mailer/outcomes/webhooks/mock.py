"""The mock ESP's push mode: ``{"events": [{"event_id", "message_id", "idempotency_key", "status",
"occurred_at"}]}``, signed in header ``X-Mock-Esp-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of
"<t>." + body>`` under a shared secret (the scheme Stripe and others use)."""

from __future__ import annotations

import hashlib
import hmac

from welcome_mailer.outcomes.webhooks import (
    Parsed,
    Refused,
    Signal,
    WebhookProvider,
    WebhookRequest,
    check_age,
    check_secret,
    from_iso,
    load_json,
    text,
)

PROVIDER = "mock"
SIGNATURE_HEADER = "X-Mock-Esp-Signature"


def sign(secret: str, timestamp: int | str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(headers, body: bytes, secret: str, max_age_seconds: float) -> None:
    fields = dict(part.split("=", 1) for part in (headers.get(SIGNATURE_HEADER) or "").split(",") if "=" in part)
    if "t" not in fields or "v1" not in fields:
        raise Refused(401, f"missing {SIGNATURE_HEADER}")
    if not check_secret(sign(secret, fields["t"], body), f"t={fields['t']},v1={fields['v1']}"):
        raise Refused(403, "the HMAC signature does not match the body")
    check_age(fields["t"], max_age_seconds)


def parse(body: bytes) -> Parsed:
    parsed = Parsed()
    whole = load_json(body, parsed)
    if whole is None:
        return parsed
    events = whole.get("events") if isinstance(whole, dict) else None
    for event in events if isinstance(events, list) else [whole]:
        if not isinstance(event, dict) or not (event.get("message_id") or event.get("idempotency_key")):
            parsed.unparsed.append(f"not an event: {str(event)[:200]}")
            continue
        parsed.signals.append(
            Signal(
                PROVIDER,
                str(event.get("status")),
                provider_message_id=text(event.get("message_id"), 100),
                idempotency_key=text(event.get("idempotency_key"), 100),
                detail=text(event.get("event_id")),
                occurred_at=from_iso(event.get("occurred_at")),
            )
        )
    return parsed


def receive(request: WebhookRequest, secret: object) -> Parsed:
    verify(request.headers, request.body, str(secret), request.max_age_seconds)
    return parse(request.body)


WEBHOOK = WebhookProvider(PROVIDER, "mock_secret", receive)
