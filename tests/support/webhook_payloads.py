"""Provider webhook payloads shaped as each provider documents them, and the signatures they carry, made
with keys and certificates generated here (no network, no real provider)."""

from __future__ import annotations

import base64
import json
import secrets
import time
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from welcome_mailer.outcomes.webhooks import mailgun, mock, ses

SNS_CERT_URL = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-0000000000000000000000.pem"
SNS_TOPIC = "arn:aws:sns:eu-west-1:123456789012:welcome-mailer-ses-events"


# -- SendGrid Event Webhook ---------------------------------------------------------------------------
class SendGridSigner:
    """An ECDSA P-256 key pair like the one SendGrid's Signed Event Webhook shows (public key, base64 DER)."""

    def __init__(self) -> None:
        self.private_key = ec.generate_private_key(ec.SECP256R1())
        der = self.private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.public_key = base64.b64encode(der).decode()

    def headers(self, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        signature = self.private_key.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        return {
            "Content-Type": "application/json",
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
        }


def sendgrid_event(event: str, message_id: str, **fields) -> dict:
    """One event as the Event Webhook posts it (docs: "Event Webhook Reference")."""
    base = {
        "email": "example@test.com",
        "timestamp": 1513299569,
        "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
        "event": event,
        "category": "cat facts",
        "sg_event_id": base64.urlsafe_b64encode(f"{event}-{message_id}".encode()).decode(),
        # the X-Message-Id the send returned, then SendGrid's routing suffix
        "sg_message_id": f"{message_id}.filter0001.16648.5515E0B88.0",
    }
    return {**base, **fields}


# -- Postmark --------------------------------------------------------------------------------------
def postmark_bounce(message_id: str, bounce_type: str, type_code: int = 1, **fields) -> dict:
    """Postmark's bounce webhook (docs: "Bounce webhook")."""
    return {
        "RecordType": "Bounce",
        "MessageStream": "outbound",
        "ID": 4323372036854775807,
        "Type": bounce_type,
        "TypeCode": type_code,
        "Name": "Hard bounce",
        "Tag": "Test",
        "MessageID": message_id,
        "Metadata": {"a_key": "a_value"},
        "ServerID": 23,
        "Description": "The server was unable to deliver your message (ex: unknown user, mailbox not found).",
        "Details": "Test bounce details",
        "Email": "john@example.com",
        "From": "sender@example.com",
        "BouncedAt": "2019-11-05T16:33:54.9070259Z",
        "DumpAvailable": True,
        "Inactive": True,
        "CanActivate": True,
        "Subject": "Test subject",
        "Content": "<Full dump of bounce>",
        **fields,
    }


def postmark_delivery(message_id: str, **fields) -> dict:
    return {
        "RecordType": "Delivery",
        "ServerID": 23,
        "MessageStream": "outbound",
        "MessageID": message_id,
        "Recipient": "john@example.com",
        "Tag": "welcome-email",
        "DeliveredAt": "2019-11-05T16:33:54.9070259Z",
        "Details": "Test delivery webhook details",
        "Metadata": {"example": "value"},
        **fields,
    }


def postmark_spam_complaint(message_id: str, **fields) -> dict:
    return {
        "RecordType": "SpamComplaint",
        "MessageStream": "outbound",
        "ID": 42,
        "Type": "SpamComplaint",
        "TypeCode": 100001,
        "Name": "Spam complaint",
        "MessageID": message_id,
        "Metadata": {},
        "Email": "john@example.com",
        "BouncedAt": "2019-11-05T16:33:54.9070259Z",
        **fields,
    }


def basic_auth(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


# -- Mailgun ---------------------------------------------------------------------------------------
def mailgun_body(signing_key: str, event: str, message_id: str, timestamp: int | None = None, **fields) -> bytes:
    """Mailgun's webhook body (docs: "Securing Webhooks": a random 50-character token per request;
    event-data of "Events")."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    token = secrets.token_hex(25)
    data = {
        "id": f"CPgfbmQMTCKtHW6uIWtuVe-{event}",
        "timestamp": float(stamp),
        "log-level": "info",
        "event": event,
        "recipient": "alice@example.com",
        "message": {"headers": {"to": "Alice <alice@example.com>", "message-id": message_id, "from": "Bob"}},
        "user-variables": {},
        **fields,
    }
    signature = {"timestamp": stamp, "token": token, "signature": mailgun.sign(signing_key, stamp, token)}
    return json.dumps({"signature": signature, "event-data": data}).encode()


# -- The mock ESP's push mode ----------------------------------------------------------------------
def mock_push(secret: str, events: list[dict], timestamp: int | None = None) -> tuple[bytes, dict[str, str]]:
    body = json.dumps({"events": events}).encode()
    stamp = int(time.time()) if timestamp is None else timestamp
    return body, {"Content-Type": "application/json", mock.SIGNATURE_HEADER: mock.sign(secret, stamp, body)}


# -- Amazon SES through SNS ------------------------------------------------------------------------
class SnsSigner:
    """A self-signed RSA certificate standing in for SNS's signing certificate at SNS_CERT_URL."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
        now = datetime.now(UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=1))
            .sign(self.key, hashes.SHA256())
        )
        self.pem = certificate.public_bytes(serialization.Encoding.PEM)
        self.fetched: list[str] = []
        self.confirmed: list[str] = []

    def certificate(self, url: str) -> bytes:
        self.fetched.append(url)
        return self.pem

    def sign(self, message: dict, version: str = "1") -> dict:
        algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
        message = {
            **message,
            "SignatureVersion": version,
            "SigningCertURL": message.get("SigningCertURL", SNS_CERT_URL),
        }
        signature = self.key.sign(ses.string_to_sign(message), padding.PKCS1v15(), algorithm)
        return {**message, "Signature": base64.b64encode(signature).decode()}


def sns_notification(ses_event: dict, message_id: str = "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324", **fields) -> dict:
    """An SNS Notification carrying an SES event (docs: "HTTP/HTTPS notification JSON format")."""
    return {
        "Type": "Notification",
        "MessageId": message_id,
        "TopicArn": SNS_TOPIC,
        "Message": json.dumps(ses_event),
        "Timestamp": "2012-05-02T00:54:06.655Z",
        "UnsubscribeURL": "https://sns.eu-west-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=x",
        **fields,
    }


def sns_subscription_confirmation() -> dict:
    return {
        "Type": "SubscriptionConfirmation",
        "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
        "Token": "2336412f37f",
        "TopicArn": SNS_TOPIC,
        "Message": f"You have chosen to subscribe to the topic {SNS_TOPIC}.",
        "SubscribeURL": "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn=x&Token=2336412f37f",
        "Timestamp": "2012-04-26T20:45:04.751Z",
    }


def ses_event(event_type: str, message_id: str, tags: dict | None = None, **details) -> dict:
    """An SES event-publishing record (docs: "Contents of event data that Amazon SES publishes to SNS")."""
    event = {
        "eventType": event_type,
        "mail": {
            "timestamp": "2016-10-19T23:20:52.240Z",
            "source": "sender@example.com",
            "sourceArn": "arn:aws:ses:us-east-1:123456789012:identity/sender@example.com",
            "sendingAccountId": "123456789012",
            "messageId": message_id,
            "destination": ["recipient@example.com"],
            "headersTruncated": False,
            "headers": [{"name": "From", "value": "sender@example.com"}],
            "commonHeaders": {"from": ["sender@example.com"], "to": ["recipient@example.com"]},
            "tags": tags or {"ses:configuration-set": ["ConfigSet"]},
        },
    }
    key = event_type[:1].lower() + event_type[1:]
    if event_type == "Bounce":
        event[key] = {
            "bounceType": details.pop("bounceType", "Permanent"),
            "bounceSubType": details.pop("bounceSubType", "General"),
            "bouncedRecipients": [
                {
                    "emailAddress": "recipient@example.com",
                    "action": "failed",
                    "status": "5.1.1",
                    "diagnosticCode": "smtp; 550 5.1.1 user unknown",
                }
            ],
            "timestamp": "2017-08-05T00:41:02.669Z",
            "feedbackId": "01000157c44f053b-61b59c11-9236-11e6-8f96-7be8aexample-000000",
            "reportingMTA": "dsn; mta.example.com",
        }
    elif event_type == "Complaint":
        event[key] = {
            "complainedRecipients": [{"emailAddress": "recipient@example.com"}],
            "timestamp": "2017-08-05T00:41:02.669Z",
            "feedbackId": "01000157c44f053b-61b59c11-9236-11e6-8f96-7be8aexample-000000",
            "complaintFeedbackType": details.pop("complaintFeedbackType", "abuse"),
        }
    elif event_type == "Delivery":
        event[key] = {
            "timestamp": "2016-10-19T23:21:04.133Z",
            "processingTimeMillis": 11893,
            "recipients": ["recipient@example.com"],
            "smtpResponse": "250 2.6.0 Message received",
            "reportingMTA": "mta.example.com",
        }
    elif event_type == "Reject":
        event[key] = {"reason": "Bad content"}
    elif event_type == "DeliveryDelay":
        event[key] = {"delayType": "InternalFailure", "expirationTime": "2020-06-01T00:00:00.000Z"}
    event.get(key, {}).update(details)
    return event
