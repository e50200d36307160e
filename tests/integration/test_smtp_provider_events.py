"""Every provider's events match mail sent over SMTP (issue 30, item 5): with the SMTP connection naming
its provider, each message carries that provider's metadata header with the idempotency key; the mock
relay's log shows it; the provider's documented event for the message, carrying the metadata as the
provider reports it back (its own message id, not ours), is matched to the attempt in the ledger.

How each provider turns the header into event data (``as_reported``) follows its docs: Postmark's
``X-PM-Metadata-<name>`` becomes ``Metadata.<name>``, SendGrid's ``X-SMTPAPI`` unique args top-level event
fields, Mailgun's ``X-Mailgun-Variables`` the event's ``user-variables``, SES's ``X-SES-MESSAGE-TAGS``
``mail.tags``."""

from __future__ import annotations

import json
from email.parser import BytesHeaderParser

import pytest

from include.mocks.smtp_relay.relay import read_log
from tests.support.events_app import SENDGRID, SNS, events_client
from tests.support.ledger import attempt_statuses, stage_and_claim
from tests.support.smtp_relay import FROM_EMAIL, launch_relay
from tests.support.webhook_payloads import (
    basic_auth,
    mailgun_body,
    postmark_delivery,
    sendgrid_event,
    ses_event,
    sns_notification,
)
from welcome_mailer import pipeline
from welcome_mailer.transports import OutgoingMessage
from welcome_mailer.transports.smtp import SmtpEmailProvider, SmtpSettings, render_message
from welcome_mailer.vocabulary import METADATA_KEY

HEADERS = {
    "postmark": f"X-PM-Metadata-{METADATA_KEY}",
    "sendgrid": "X-SMTPAPI",
    "mailgun": "X-Mailgun-Variables",
    "ses": "X-SES-MESSAGE-TAGS",
}


@pytest.fixture
def client(ledger):
    with events_client(ledger) as client:
        yield client


def as_reported(provider: str, headers) -> dict:
    """The custom metadata the provider reports in its events for a message with these headers."""
    if provider == "postmark":
        prefix = "x-pm-metadata-"
        return {name[len(prefix) :]: value for name, value in headers.items() if name.lower().startswith(prefix)}
    if provider == "sendgrid":
        return json.loads(headers.get("X-SMTPAPI") or "{}").get("unique_args", {})
    if provider == "mailgun":
        return json.loads(headers.get("X-Mailgun-Variables") or "{}")
    tags = [tag.split("=", 1) for tag in (headers.get("X-SES-MESSAGE-TAGS") or "").split(",") if "=" in tag]
    return {name.strip(): [value.strip()] for name, value in tags}


def post_event(client, provider: str, metadata: dict):
    """The provider's documented delivery event for the message, under the provider's own message id."""
    if provider == "postmark":
        event = postmark_delivery("b7bc2f4a-e38e-4336-af7d-e6c392c2f817", Metadata=metadata)
        return client.post("/events/postmark", json=event, headers=basic_auth("hooks", "pm-secret"))
    if provider == "sendgrid":
        body = json.dumps([sendgrid_event("delivered", "14c5d75ce93.dfd.64b469", **metadata)]).encode()
        return client.post("/events/sendgrid", content=body, headers=SENDGRID.headers(body))
    if provider == "mailgun":
        body = mailgun_body("mg-key", "delivered", "20130503182626.18666.16540@mg.example.com",
                            **{"user-variables": metadata})  # fmt: skip
        return client.post("/events/mailgun", content=body)
    notification = sns_notification(ses_event("Delivery", "0100017c-ses-own-id", tags=metadata))
    return client.post("/events/ses", json=SNS.sign(notification))


@pytest.mark.parametrize("provider", ["postmark", "sendgrid", "mailgun", "ses"])
def test_a_providers_event_for_mail_sent_over_smtp_finds_its_attempt(client, ledger, tmp_path, provider):
    relay = launch_relay(tmp_path, tmp_path / "maildir", delivered_rate=1, bounced_rate=0, blocked_rate=0)
    try:
        settings = SmtpSettings(host="127.0.0.1", port=relay.port, from_email=FROM_EMAIL, use_ssl=False,
                                starttls=False, timeout=10, provider=provider)  # fmt: skip
        claimed = stage_and_claim(ledger, "run", ["ann@example.com"])
        with SmtpEmailProvider(settings) as transport:
            pipeline.send_batch(ledger, transport, "run", claimed.batches[0], 100)
        [logged] = read_log(relay.log_path)
    finally:
        relay.stop()
    headers = BytesHeaderParser().parsebytes(logged["raw"])
    key = logged["idempotency_key"]
    assert HEADERS[provider] in headers, "the relay received the provider's metadata header"
    metadata = as_reported(provider, headers)
    assert metadata == ({METADATA_KEY: [key]} if provider == "ses" else {METADATA_KEY: key})
    answer = post_event(client, provider, metadata)
    assert answer.status_code == 200 and answer.json()["applied"] == 1, answer.text
    assert attempt_statuses(ledger) == {("ann@example.com", 1): "delivered"}


def test_no_provider_no_metadata_header_and_an_unknown_provider_is_refused():
    message = OutgoingMessage("ann@example.com", "Hi", "Hi Ann", "welcome-" + "0" * 40 + "-1")
    raw = render_message(SmtpSettings(host="relay", from_email=FROM_EMAIL), message)
    assert not any(name.encode() in raw for name in HEADERS.values())
    with pytest.raises(ValueError, match="provider must be one of"):
        SmtpSettings(host="relay", from_email=FROM_EMAIL, provider="sparkpost")
