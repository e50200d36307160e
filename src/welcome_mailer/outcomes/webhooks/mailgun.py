"""Mailgun webhooks: one JSON object per request, ``{"signature": {timestamp, token, signature},
"event-data": {...}}``; the signature is the hex HMAC-SHA256 of timestamp + token under the domain's
HTTP webhook signing key."""

from __future__ import annotations

import hashlib
import hmac
import json

from welcome_mailer.outcomes.webhooks import (
    Parsed,
    Refused,
    Signal,
    WebhookProvider,
    WebhookRequest,
    check_age,
    check_secret,
    from_epoch,
    load_json,
    text,
)
from welcome_mailer.vocabulary import METADATA_KEY, key_from_message_id

PROVIDER = "mailgun"


def sign(signing_key: str, timestamp: str, token: str) -> str:
    return hmac.new(signing_key.encode(), f"{timestamp}{token}".encode(), hashlib.sha256).hexdigest()


def verify(body: bytes, signing_key: str, max_age_seconds: float) -> tuple[str, str]:
    """The signature travels inside the body: the body must be read to check it. Returns the signed
    (timestamp, token): the token must be honoured once (``replay.used_once``)."""
    try:
        signature = json.loads(body)["signature"]
        timestamp, token, given = str(signature["timestamp"]), str(signature["token"]), str(signature["signature"])
    except (ValueError, KeyError, TypeError):
        raise Refused(401, "no Mailgun signature in the body") from None
    if not check_secret(given, sign(signing_key, timestamp, token)):
        raise Refused(403, "the HMAC signature does not match")
    check_age(timestamp, max_age_seconds)
    return timestamp, token


def parse(body: bytes) -> Parsed:
    parsed = Parsed()
    whole = load_json(body, parsed)
    if whole is None:
        return parsed
    data = whole.get("event-data") if isinstance(whole, dict) else None
    if not isinstance(data, dict) or not isinstance(data.get("event"), str):
        parsed.unparsed.append(f"not a Mailgun event: {str(data)[:200]}")
        return parsed
    headers = (data.get("message") or {}).get("headers") or {}
    # The send API answers "<id@domain>"; events carry the same id without the angle brackets.
    message_id = str(headers.get("message-id") or "").strip("<>") or None
    variables = data.get("user-variables") if isinstance(data.get("user-variables"), dict) else {}
    key = variables.get(METADATA_KEY) or key_from_message_id(message_id)
    if not (message_id or key):
        parsed.unparsed.append(f"{data['event']} event names no message: {str(data)[:200]}")
        return parsed
    kind = str(data.get("severity") or "")
    if kind == "permanent" and data.get("reason") == "old":
        kind = "permanent:old"
    status = data.get("delivery-status") if isinstance(data.get("delivery-status"), dict) else {}
    parsed.signals.append(
        Signal(
            PROVIDER,
            data["event"],
            kind,
            provider_message_id=message_id,
            idempotency_key=text(key, 100),
            detail=text(status.get("description") or status.get("message") or data.get("reason")),
            occurred_at=from_epoch(data.get("timestamp")),
        )
    )
    return parsed


def receive(request: WebhookRequest, signing_key: object) -> Parsed:
    timestamp, token = verify(request.body, str(signing_key), request.max_age_seconds)
    parsed = parse(request.body)
    parsed.once = (token, timestamp)  # the signature does not cover the event: its token is honoured once
    return parsed


WEBHOOK = WebhookProvider(PROVIDER, "mailgun_signing_key", receive)
