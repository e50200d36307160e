"""Provider webhooks, pure: each provider's documented payloads mapped to ledger outcomes, and what each
provider signs verified (tests/support/webhook_payloads.py builds both; no network)."""

from __future__ import annotations

import json
import time

import pytest

from tests.support.webhook_payloads import (
    SNS_TOPIC,
    SendGridSigner,
    SnsSigner,
    basic_auth,
    mailgun_body,
    mock_push,
    postmark_bounce,
    postmark_delivery,
    postmark_spam_complaint,
    sendgrid_event,
    ses_event,
    sns_notification,
    sns_subscription_confirmation,
)
from welcome_mailer.outcomes.webhooks import Refused, mailgun, mock, postmark, sendgrid, ses
from welcome_mailer.outcomes.webhooks.mapping import MAPPING, outcome_of, to_outcome_event
from welcome_mailer.vocabulary import idempotency_key, key_from_message_id

DAY = 86400


def outcomes(parsed) -> list[str | None]:
    return [outcome_of(s) for s in parsed.signals]


@pytest.mark.parametrize(
    ("event", "fields", "outcome"),
    [
        ("delivered", {"response": "250 OK"}, "delivered"),
        ("bounce", {"type": "bounce", "reason": "550 5.1.1 unknown user", "status": "5.1.1"}, "bounced"),
        ("bounce", {"type": "blocked", "reason": "421 try later", "status": "4.0.0"}, "blocked"),
        ("dropped", {"reason": "Bounced Address", "status": "5.0.0"}, "bounced"),
        ("deferred", {"response": "400 try again later", "attempt": "5"}, None),
        ("spamreport", {}, "complained"),
        ("processed", {}, None),
        ("open", {"useragent": "Mozilla", "ip": "255.255.255.255"}, None),
    ],
)
def test_sendgrid_events_map_to_outcomes(event, fields, outcome):
    body = json.dumps([sendgrid_event(event, "14c5d75ce93.dfd.64b469", **fields)]).encode()
    [signal] = sendgrid.parse(body).signals
    assert signal.provider_message_id == "14c5d75ce93.dfd.64b469", "sg_message_id without SendGrid's .filter suffix"
    assert outcome_of(signal) == outcome


def test_sendgrid_carries_the_idempotency_key_as_a_custom_arg():
    key = idempotency_key("a@example.com", 2)
    body = json.dumps([sendgrid_event("delivered", "x", welcome_idempotency_key=key)]).encode()
    assert sendgrid.parse(body).signals[0].idempotency_key == key


def test_sendgrid_signature_is_checked_over_timestamp_and_body():
    signer, body = SendGridSigner(), json.dumps([sendgrid_event("delivered", "m")]).encode()
    sendgrid.verify(signer.headers(body), body, signer.public_key, DAY)
    with pytest.raises(Refused) as refused:
        sendgrid.verify(signer.headers(body), body + b" ", signer.public_key, DAY)
    assert refused.value.status_code == 403
    with pytest.raises(Refused) as refused:
        sendgrid.verify(signer.headers(body), body, SendGridSigner().public_key, DAY)  # another account's key
    assert refused.value.status_code == 403
    with pytest.raises(Refused) as refused:
        sendgrid.verify({}, body, signer.public_key, DAY)
    assert refused.value.status_code == 401
    with pytest.raises(Refused, match="from now"):  # a replay of a request signed two days ago
        sendgrid.verify(signer.headers(body, int(time.time()) - 2 * DAY), body, signer.public_key, DAY)


@pytest.mark.parametrize(
    ("payload", "outcome"),
    [
        (postmark_delivery("883953f4-6105-42a2-a16a-77a8eac79483"), "delivered"),
        (postmark_bounce("883953f4-6105-42a2-a16a-77a8eac79483", "HardBounce", 1), "bounced"),
        (postmark_bounce("883953f4-6105-42a2-a16a-77a8eac79483", "SoftBounce", 4096), "blocked"),
        (postmark_bounce("883953f4-6105-42a2-a16a-77a8eac79483", "Transient", 2), "blocked"),
        (postmark_bounce("883953f4-6105-42a2-a16a-77a8eac79483", "Blocked", 100006), "blocked"),
        (postmark_bounce("883953f4-6105-42a2-a16a-77a8eac79483", "AutoResponder", 64), None),
        (postmark_spam_complaint("883953f4-6105-42a2-a16a-77a8eac79483"), "complained"),
    ],
)
def test_postmark_webhooks_map_to_outcomes(payload, outcome):
    [signal] = postmark.parse(json.dumps(payload).encode()).signals
    assert signal.provider_message_id == "883953f4-6105-42a2-a16a-77a8eac79483"
    assert outcome_of(signal) == outcome


def test_postmark_is_checked_by_basic_auth():
    postmark.verify(basic_auth("hooks", "s3cret"), "hooks:s3cret")
    for headers, status in ((basic_auth("hooks", "wrong"), 403), ({}, 401), ({"Authorization": "Basic !!"}, 401)):
        with pytest.raises(Refused) as refused:
            postmark.verify(headers, "hooks:s3cret")
        assert refused.value.status_code == status


@pytest.mark.parametrize(
    ("event", "fields", "outcome"),
    [
        ("delivered", {"delivery-status": {"code": 250, "message": "OK"}}, "delivered"),
        ("failed", {"severity": "permanent", "reason": "bounce"}, "bounced"),
        ("failed", {"severity": "permanent", "reason": "old"}, "blocked"),
        ("failed", {"severity": "temporary", "reason": "generic"}, None),
        ("complained", {}, "complained"),
        ("opened", {}, None),
    ],
)
def test_mailgun_events_map_to_outcomes(event, fields, outcome):
    body = mailgun_body("key-1", event, "20130503182626.18666.16540@example.com", **fields)
    [signal] = mailgun.parse(body).signals
    assert signal.provider_message_id == "20130503182626.18666.16540@example.com"
    assert outcome_of(signal) == outcome


def test_mailgun_signature_is_an_hmac_of_timestamp_and_token():
    body = mailgun_body("key-1", "delivered", "m@x")
    mailgun.verify(body, "key-1", DAY)
    with pytest.raises(Refused) as refused:
        mailgun.verify(body, "key-2", DAY)
    assert refused.value.status_code == 403
    with pytest.raises(Refused) as refused:
        mailgun.verify(b'{"event-data": {}}', "key-1", DAY)
    assert refused.value.status_code == 401
    with pytest.raises(Refused, match="from now"):
        mailgun.verify(mailgun_body("key-1", "delivered", "m@x", timestamp=int(time.time()) - 2 * DAY), "key-1", DAY)


def test_the_mock_push_format_is_signed_over_timestamp_and_body():
    body, headers = mock_push("s", [{"event_id": "e1", "message_id": "msg_1", "status": "bounced"}])
    mock.verify(headers, body, "s", DAY)
    with pytest.raises(Refused):
        mock.verify(headers, body, "other", DAY)
    with pytest.raises(Refused):
        mock.verify(headers, body.replace(b"bounced", b"delivered"), "s", DAY)
    assert outcomes(mock.parse(body)) == ["bounced"]


@pytest.mark.parametrize(
    ("event", "details", "outcome"),
    [
        ("Delivery", {}, "delivered"),
        ("Bounce", {"bounceType": "Permanent", "bounceSubType": "NoEmail"}, "bounced"),
        ("Bounce", {"bounceType": "Transient", "bounceSubType": "MailboxFull"}, "blocked"),
        ("Bounce", {"bounceType": "Undetermined", "bounceSubType": "Undetermined"}, "bounced"),
        ("Complaint", {}, "complained"),
        ("Complaint", {"complaintFeedbackType": "not-spam"}, None),
        ("Reject", {}, "bounced"),
        ("DeliveryDelay", {}, None),
    ],
)
def test_ses_events_map_to_outcomes(event, details, outcome):
    message = sns_notification(
        ses_event(event, "EXAMPLE7c191be45-e9aedb9a-02f9-4d12-a87d-dd0099a07f8a-000000", **details)
    )
    [signal] = ses.parse(message).signals
    assert signal.provider_message_id == "EXAMPLE7c191be45-e9aedb9a-02f9-4d12-a87d-dd0099a07f8a-000000"
    assert outcome_of(signal) == outcome


def test_ses_identity_notifications_map_like_published_events():
    event = ses_event("Bounce", "m-1", bounceType="Transient")
    event["notificationType"] = event.pop("eventType")
    assert outcomes(ses.parse(sns_notification(event))) == ["blocked"]


def test_ses_carries_the_idempotency_key_as_a_message_tag():
    key = idempotency_key("a@example.com", 1)
    message = sns_notification(ses_event("Delivery", "m-1", tags={"welcome_idempotency_key": [key]}))
    assert ses.parse(message).signals[0].idempotency_key == key


@pytest.mark.parametrize("version", ["1", "2"])
def test_sns_signatures_of_both_versions_are_verified_with_the_signing_certificate(version):
    signer = SnsSigner()
    for message in (sns_notification(ses_event("Delivery", "m-1")), sns_subscription_confirmation()):
        signed = signer.sign(message, version)
        assert ses.verify(json.dumps(signed).encode(), {SNS_TOPIC}, signer.certificate)["Type"] == message["Type"]
        tampered = {**signed, "Message": signed["Message"] + " "}
        with pytest.raises(Refused, match="signature does not match"):
            ses.verify(json.dumps(tampered).encode(), {SNS_TOPIC}, signer.certificate)


def test_sns_string_to_sign_follows_the_documented_field_order():
    notification = sns_notification({}, Subject="Hi")
    assert ses.string_to_sign(notification).decode().split("\n")[::2][:-1] == [
        "Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type",
    ]  # fmt: skip
    assert ses.string_to_sign(sns_subscription_confirmation()).decode().split("\n")[::2][:-1] == [
        "Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"TopicArn": "arn:aws:sns:eu-west-1:666666666666:someone-elses-topic"}, "not allow-listed"),
        ({"SigningCertURL": "https://sns.eu-west-1.amazonaws.com.evil.example/cert.pem"}, "not on an SNS host"),
        ({"SigningCertURL": "http://sns.eu-west-1.amazonaws.com/cert.pem"}, "not on an SNS host"),
        ({"SigningCertURL": "https://evil.example/sns.eu-west-1.amazonaws.com/cert.pem"}, "not on an SNS host"),
        ({"SignatureVersion": "3"}, "SignatureVersion"),
    ],
)
def test_sns_messages_from_other_topics_or_certificate_hosts_are_refused(change, reason):
    signer = SnsSigner()
    signed = {**signer.sign(sns_notification(ses_event("Delivery", "m-1"))), **change}
    with pytest.raises(Refused, match=reason) as refused:
        ses.verify(json.dumps(signed).encode(), {SNS_TOPIC}, signer.certificate)
    assert refused.value.status_code == 403
    assert signer.fetched == [], "nothing is fetched for a refused message"


def test_every_mapping_row_names_a_known_outcome_or_none():
    assert {outcome for outcome in MAPPING.values()} <= {"delivered", "bounced", "blocked", "complained", None}


def test_an_event_that_names_no_message_is_unparsed_not_dropped():
    event = sendgrid_event("bounce", "x", type="bounce")
    del event["sg_message_id"], event["smtp-id"]
    parsed = sendgrid.parse(json.dumps([event, "garbage"]).encode())
    assert (parsed.signals, len(parsed.unparsed)) == ([], 2)
    assert len(sendgrid.parse(b"{not json").unparsed) == 1


def test_the_idempotency_key_is_found_inside_a_message_id_the_transport_made():
    key = idempotency_key("a@example.com", 3)
    assert key_from_message_id(f"<{key}@mailer.example.com>") == key
    assert key_from_message_id("<random@x>") is None
    body = json.dumps([sendgrid_event("delivered", "", **{"smtp-id": f"<{key}@mailer.example.com>"})]).encode()
    event = to_outcome_event(sendgrid.parse(body).signals[0])
    assert (event.outcome, event.idempotency_key, event.source) == ("delivered", key, "webhook:sendgrid")
