"""SendGrid Event Webhook: a JSON array of events, signed with ECDSA (P-256, SHA-256) over the timestamp
header followed by the raw body; the verification key is the account's public key (Settings > Mail
Settings > Event Webhook > Signed Event Webhook), base64 DER as SendGrid shows it, or PEM."""

from __future__ import annotations

import base64

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from welcome_mailer.outcomes.webhooks import (
    Parsed,
    Refused,
    Signal,
    WebhookProvider,
    WebhookRequest,
    check_age,
    from_epoch,
    load_json,
    text,
)
from welcome_mailer.vocabulary import METADATA_KEY, key_from_message_id

PROVIDER = "sendgrid"
SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"


def load_public_key(value: str) -> ec.EllipticCurvePublicKey:
    value = value.strip()
    if value.startswith("-----BEGIN"):
        key = serialization.load_pem_public_key(value.encode())
    else:
        key = serialization.load_der_public_key(base64.b64decode(value))
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("the SendGrid verification key must be an ECDSA public key")
    return key


def verify(headers, body: bytes, public_key: str, max_age_seconds: float) -> None:
    signature, timestamp = headers.get(SIGNATURE_HEADER), headers.get(TIMESTAMP_HEADER)
    if not signature or not timestamp:
        raise Refused(401, f"missing {SIGNATURE_HEADER} or {TIMESTAMP_HEADER}")
    try:
        load_public_key(public_key).verify(
            base64.b64decode(signature), timestamp.encode() + body, ec.ECDSA(hashes.SHA256())
        )
    except (InvalidSignature, ValueError):
        raise Refused(403, "the ECDSA signature does not match the body") from None
    check_age(timestamp, max_age_seconds)


def parse(body: bytes) -> Parsed:
    parsed = Parsed()
    events = load_json(body, parsed)
    if events is None:
        return parsed
    if not isinstance(events, list):
        parsed.unparsed.append("body is not a JSON array of events")
        return parsed
    for event in events:
        if not isinstance(event, dict) or not isinstance(event.get("event"), str):
            parsed.unparsed.append(f"not an event: {str(event)[:200]}")
            continue
        # sg_message_id is the X-Message-Id the send returned, followed by ".filter..." routing details
        # (older ids contain dots themselves: "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0").
        sg_message_id = str(event.get("sg_message_id") or "").split(".filter", 1)[0] or None
        key = event.get(METADATA_KEY) or key_from_message_id(event.get("smtp-id"))
        if not (sg_message_id or key):
            parsed.unparsed.append(f"{event['event']} event names no message: {str(event)[:200]}")
            continue
        parsed.signals.append(
            Signal(
                PROVIDER,
                event["event"],
                str(event.get("type") or ""),
                provider_message_id=sg_message_id,
                idempotency_key=text(key, 100),
                detail=text(event.get("reason") or event.get("response") or event.get("status")),
                occurred_at=from_epoch(event.get("timestamp")),
            )
        )
    return parsed


def receive(request: WebhookRequest, public_key: object) -> Parsed:
    verify(request.headers, request.body, str(public_key), request.max_age_seconds)
    return parse(request.body)


WEBHOOK = WebhookProvider(PROVIDER, "sendgrid_public_key", receive)
