"""Amazon SES events delivered by Amazon SNS to an HTTP(S) subscription.

SNS signs every message with RSA over a canonical string of its fields, verifiable with the X.509
certificate at ``SigningCertURL``; SignatureVersion 1 uses SHA1, 2 uses SHA256. The certificate is
fetched only from an allow-listed host (``sns.<region>.amazonaws.com``, over https, a ``.pem`` path), so
a forged message cannot point at its own certificate. Anybody can create an SNS topic, though, and SNS
signs their messages with the same certificate: the ``TopicArn`` must be one of ours (allow-listed).

SES's payload is the SNS ``Message``: an event-publishing record (``eventType``) or an identity
notification (``notificationType``), with ``mail.messageId`` = the id SES returned at send.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Collection
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from welcome_mailer.outcomes.webhooks import (
    IDEMPOTENCY_HEADER,
    Answered,
    Parsed,
    Refused,
    Signal,
    WebhookProvider,
    WebhookRequest,
    from_iso,
    load_json,
    text,
)
from welcome_mailer.vocabulary import METADATA_KEY, key_from_message_id

PROVIDER = "ses"
CERT_HOST = re.compile(r"^sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$")
NOTIFICATION_FIELDS = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
CONFIRMATION_FIELDS = ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")
HASHES = {"1": hashes.SHA1, "2": hashes.SHA256}


def string_to_sign(message: dict) -> bytes:
    """SNS's canonical form: ``name\\nvalue\\n`` for each signed field present, in this order."""
    fields = NOTIFICATION_FIELDS if message.get("Type") == "Notification" else CONFIRMATION_FIELDS
    return "".join(f"{name}\n{message[name]}\n" for name in fields if message.get(name) is not None).encode()


def allowed_url(url: str) -> bool:
    """An https URL on an SNS host (for the signing certificate and the subscription confirmation)."""
    parts = urlsplit(url or "")
    return parts.scheme == "https" and bool(CERT_HOST.match(parts.hostname or "")) and not parts.port


def verify(body: bytes, topic_arns: Collection[str], certificate_pem: Callable[[str], bytes]) -> dict:
    """The SNS message, once its topic is ours and its signature checks out; ``certificate_pem(url)``
    fetches (and may cache) a certificate from an allowed URL."""
    try:
        message = json.loads(body)
        kind, signature = message["Type"], base64.b64decode(message["Signature"])
        cert_url, version = message["SigningCertURL"], str(message.get("SignatureVersion", "1"))
    except (ValueError, KeyError, TypeError):
        raise Refused(401, "not a signed SNS message") from None
    if message.get("TopicArn") not in topic_arns:
        raise Refused(403, f"topic {message.get('TopicArn')!r} is not allow-listed")
    if version not in HASHES:
        raise Refused(403, f"unknown SNS SignatureVersion {version!r}")
    if not allowed_url(cert_url) or not cert_url.endswith(".pem"):
        raise Refused(403, f"signing certificate URL {cert_url!r} is not on an SNS host")
    if kind == "SubscriptionConfirmation" and not allowed_url(message.get("SubscribeURL", "")):
        raise Refused(403, "SubscribeURL is not on an SNS host")
    try:
        public_key = x509.load_pem_x509_certificate(certificate_pem(cert_url)).public_key()
        if not isinstance(public_key, rsa.RSAPublicKey):
            raise ValueError("not an RSA certificate")
        public_key.verify(signature, string_to_sign(message), padding.PKCS1v15(), HASHES[version]())
    except (InvalidSignature, ValueError, KeyError):
        raise Refused(403, "the SNS signature does not match") from None
    return message


def parse(message: dict) -> Parsed:
    """The SES event inside a verified SNS Notification."""
    parsed = Parsed()
    event = load_json(message.get("Message", ""), parsed, "the SNS Message")
    if event is None:
        return parsed
    name = event.get("eventType") or event.get("notificationType") if isinstance(event, dict) else None
    mail = event.get("mail") if isinstance(event, dict) and isinstance(event.get("mail"), dict) else {}
    if not isinstance(name, str) or not mail.get("messageId"):
        parsed.unparsed.append(f"not an SES event: {str(event)[:200]}")
        return parsed
    details = event.get(name[:1].lower() + name[1:]) or {}  # "Bounce" -> event["bounce"]
    kind = details.get("bounceType") if name == "Bounce" else ""
    if name == "Complaint" and details.get("complaintFeedbackType") == "not-spam":
        kind = "not-spam"  # the recipient said it is NOT spam
    tags = mail.get("tags") if isinstance(mail.get("tags"), dict) else {}
    headers = {h.get("name"): h.get("value") for h in mail.get("headers") or [] if isinstance(h, dict)}
    key = (tags.get(METADATA_KEY) or [None])[0] or headers.get(IDEMPOTENCY_HEADER)
    key = key or key_from_message_id((mail.get("commonHeaders") or {}).get("messageId"))
    recipients = details.get("bouncedRecipients") or details.get("complainedRecipients") or [{}]
    diagnostic = recipients[0].get("diagnosticCode") if isinstance(recipients[0], dict) else None
    parsed.signals.append(
        Signal(
            PROVIDER,
            name,
            str(kind),
            provider_message_id=text(mail["messageId"], 100),
            idempotency_key=text(key, 100),
            detail=text(
                " ".join(str(x) for x in (details.get("bounceSubType"), diagnostic, details.get("reason")) if x)
            ),
            occurred_at=from_iso(details.get("timestamp") or mail.get("timestamp")),
        )
    )
    return parsed


def receive(request: WebhookRequest, topic_arns: object) -> Parsed | Answered:
    """Confirms the subscription (through the web app), then parses Bounce, Delivery, Complaint and Reject
    notifications."""
    message = verify(request.body, topic_arns, request.fetch)
    if message["Type"] == "SubscriptionConfirmation":
        arn = message["TopicArn"]
        return Answered({"confirmed": arn}, f"confirmed the SNS subscription to {arn}", message["SubscribeURL"])
    if message["Type"] != "Notification":
        return Answered({"ignored": message["Type"]}, f"SNS {message['Type']} for {message['TopicArn']}")
    return parse(message)


WEBHOOK = WebhookProvider(PROVIDER, "sns_topic_arns", receive)
