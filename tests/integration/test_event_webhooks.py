"""The plugin app's provider event endpoints and the unsubscribe endpoint, over HTTP (FastAPI's test
client), against a real ledger on SQLite and Postgres: verified, stored before the answer, idempotent,
order-tolerant, and refusing what is not signed."""

from __future__ import annotations

import json
import logging
import time

import pytest
from sqlalchemy import func, select

from tests.support.events_app import SENDGRID, SNS, UNSUBSCRIBE, events_client, logged_requests
from tests.support.ledger import attempt_statuses, contact_status, sent
from tests.support.webhook_payloads import (
    SendGridSigner,
    SnsSigner,
    basic_auth,
    mailgun_body,
    mock_push,
    postmark_bounce,
    postmark_delivery,
    sendgrid_event,
    ses_event,
    sns_notification,
    sns_subscription_confirmation,
)
from welcome_mailer.ledger.schema import outcome_inbox
from welcome_mailer.unsubscribe import list_unsubscribe_headers
from welcome_mailer.vocabulary import idempotency_key
from welcome_mailer.web.events import WebhookSettings, webhook_settings


@pytest.fixture
def client(ledger):
    with events_client(ledger) as client:
        yield client


def post_sendgrid(client, events: list[dict]):
    body = json.dumps(events).encode()
    return client.post("/events/sendgrid", content=body, headers=SENDGRID.headers(body))


def test_sendgrid_events_drive_contacts_to_their_outcomes(client, ledger):
    ids = sent(ledger, "run", "a@example.com", "b@example.com", "c@example.com", "d@example.com")
    answer = post_sendgrid(
        client,
        [
            sendgrid_event("delivered", ids["a@example.com"]),
            sendgrid_event("bounce", ids["b@example.com"], type="bounce"),
            sendgrid_event("bounce", ids["c@example.com"], type="blocked"),
            sendgrid_event("spamreport", ids["d@example.com"]),
            sendgrid_event("deferred", ids["a@example.com"]),
            sendgrid_event("open", ids["a@example.com"]),
        ],
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "events": 6, "recorded": 4, "applied": 4, "unchanged": 0, "inboxed": 0, "ignored": 2, "unparsed": 0,
    }  # fmt: skip
    assert [contact_status(ledger, f"{c}@example.com") for c in "abcd"] == [
        "delivered", "bounced", "blocked", "complained",
    ]  # fmt: skip
    [stored] = logged_requests(ledger)
    assert (stored.provider, stored.events, stored.recorded, stored.ignored) == ("sendgrid", 6, 4, 2)


def test_a_retried_event_with_a_new_event_id_changes_nothing(client, ledger):
    ids = sent(ledger, "run", "a@example.com")
    first = sendgrid_event("bounce", ids["a@example.com"], type="bounce", sg_event_id="first-id")
    retry = {**first, "sg_event_id": "a-new-id-on-retry"}
    assert post_sendgrid(client, [first]).json()["applied"] == 1
    answer = post_sendgrid(client, [retry, first]).json()
    assert (answer["applied"], answer["unchanged"]) == (0, 2)
    assert contact_status(ledger, "a@example.com") == "bounced"


def test_a_delivery_and_a_later_bounce_from_different_providers_end_bounced(client, ledger):
    ids = sent(ledger, "run", "a@example.com", "b@example.com")
    post_sendgrid(client, [sendgrid_event("bounce", ids["a@example.com"], type="bounce")])
    post_sendgrid(client, [sendgrid_event("delivered", ids["a@example.com"])])  # out of order
    body = mailgun_body("mg-key", "delivered", ids["b@example.com"])
    assert client.post("/events/mailgun", content=body).status_code == 200
    body = mailgun_body("mg-key", "failed", ids["b@example.com"], severity="permanent", reason="bounce")
    assert client.post("/events/mailgun", content=body).status_code == 200
    assert (contact_status(ledger, "a@example.com"), contact_status(ledger, "b@example.com")) == ("bounced", "bounced")


def test_events_for_unknown_messages_and_unreadable_ones_are_kept_and_counted(client, ledger):
    answer = post_sendgrid(client, [sendgrid_event("bounce", "nobody-sent-this", type="bounce"), {"no": "event"}])
    assert answer.json()["inboxed"] == 1 and answer.json()["unparsed"] == 1
    body = b"this is not JSON"
    answer = client.post("/events/sendgrid", content=body, headers=SENDGRID.headers(body))
    assert answer.status_code == 200 and answer.json()["unparsed"] == 1
    assert ledger.inbox_size() == 1
    stored = logged_requests(ledger)
    assert [r.unparsed for r in stored] == [1, 1]
    assert stored[1].body == "this is not JSON" and "not JSON" in stored[1].detail


def test_an_event_arriving_before_its_send_is_recorded_is_applied_when_it_is(client, ledger):
    from tests.support.ledger import stage_and_claim
    from welcome_mailer.ledger import AcceptedAttempt

    claimed = stage_and_claim(ledger, "run", ["a@example.com"])
    [attempt] = ledger.start_attempts("run", claimed.batches[0])
    event = sendgrid_event("bounce", "", type="bounce", welcome_idempotency_key=attempt.idempotency_key)
    assert post_sendgrid(client, [event]).json()["inboxed"] == 1
    ledger.record_sent("run", [AcceptedAttempt(attempt.email, attempt.attempt, "sg-1")])
    assert contact_status(ledger, "a@example.com") == "bounced"


@pytest.mark.parametrize(
    ("path", "headers", "body", "status"),
    [
        ("/events/sendgrid", {}, b"[]", 401),
        ("/events/sendgrid", SendGridSigner().headers(b"[]"), b"[]", 403),  # signed with another key
        ("/events/postmark", {}, b"{}", 401),
        ("/events/postmark", basic_auth("hooks", "guess"), b"{}", 403),
        ("/events/mailgun", {}, mailgun_body("not-our-key", "delivered", "m"), 403),
        ("/events/mailgun", {}, b"{}", 401),
        ("/events/mock", {}, b"{}", 401),
        ("/events/mock", mock_push("guess", [])[1], mock_push("guess", [])[0], 403),
        ("/events/ses", {}, json.dumps(SnsSigner().sign(sns_notification(ses_event("Bounce", "m")))).encode(), 403),
        ("/events/ses", {}, b"{}", 401),
    ],
)
def test_anything_not_signed_by_the_provider_is_refused_and_logged(client, ledger, caplog, path, headers, body, status):
    sent(ledger, "run", "a@example.com")
    with caplog.at_level(logging.WARNING, logger="welcome_mailer.web.events"):
        answer = client.post(path, content=body, headers=headers)
    assert answer.status_code == status, answer.text
    assert any(r.message.startswith("refused ") for r in caplog.records), "a log line says why"
    assert logged_requests(ledger) == [], "nothing refused is stored"
    assert contact_status(ledger, "a@example.com") == "sent"


def test_a_replay_of_an_old_signed_request_is_refused_and_a_recent_one_changes_nothing(client, ledger):
    ids = sent(ledger, "run", "a@example.com")
    body = json.dumps([sendgrid_event("bounce", ids["a@example.com"], type="blocked")]).encode()
    old = SENDGRID.headers(body, timestamp=int(time.time()) - 3 * 86400)
    assert client.post("/events/sendgrid", content=body, headers=old).status_code == 403
    headers = SENDGRID.headers(body)
    assert client.post("/events/sendgrid", content=body, headers=headers).json()["applied"] == 1
    assert client.post("/events/sendgrid", content=body, headers=headers).json()["applied"] == 0


def test_an_unconfigured_provider_is_refused(client, ledger):
    client.app.dependency_overrides[webhook_settings] = lambda: WebhookSettings()
    body = json.dumps([sendgrid_event("delivered", "m")]).encode()
    assert client.post("/events/sendgrid", content=body, headers=SENDGRID.headers(body)).status_code == 403


def test_postmark_bounce_and_delivery_webhooks(client, ledger):
    ids = sent(ledger, "run", "a@example.com", "b@example.com")
    auth = basic_auth("hooks", "pm-secret")
    key = idempotency_key("b@example.com", 1)
    for payload in (
        postmark_delivery(ids["a@example.com"]),
        postmark_bounce("", "SoftBounce", 4096, Metadata={"welcome_idempotency_key": key}),
    ):
        assert client.post("/events/postmark", json=payload, headers=auth).status_code == 200
    assert (contact_status(ledger, "a@example.com"), contact_status(ledger, "b@example.com")) == (
        "delivered",
        "blocked",
    )


def test_mock_push_events(client, ledger):
    ids = sent(ledger, "run", "a@example.com", "b@example.com")
    body, headers = mock_push(
        "mock-secret",
        [
            {"event_id": "1", "message_id": ids["a@example.com"], "status": "delivered"},
            {"event_id": "2", "message_id": ids["b@example.com"], "status": "bounced"},
        ],
    )
    assert client.post("/events/mock", content=body, headers=headers).json()["applied"] == 2
    assert attempt_statuses(ledger) == {("a@example.com", 1): "delivered", ("b@example.com", 1): "bounced"}


@pytest.mark.parametrize("version", ["1", "2"])
def test_ses_through_sns_confirms_its_subscription_then_records_events(client, ledger, version):
    confirmation = SNS.sign(sns_subscription_confirmation(), version)
    assert client.post("/events/ses", json=confirmation).status_code == 200
    assert SNS.confirmed == [confirmation["SubscribeURL"]]
    ids = sent(ledger, "run", "a@example.com", "b@example.com", "c@example.com")
    for email, event in (
        ("a@example.com", ses_event("Delivery", ids["a@example.com"])),
        ("a@example.com", ses_event("Bounce", ids["a@example.com"], bounceType="Permanent")),  # after delivery
        ("b@example.com", ses_event("Bounce", ids["b@example.com"], bounceType="Transient")),
        ("c@example.com", ses_event("Complaint", ids["c@example.com"])),
    ):
        answer = client.post("/events/ses", json=SNS.sign(sns_notification(event), version))
        assert answer.status_code == 200, (email, answer.text)
    assert [contact_status(ledger, f"{c}@example.com") for c in "abc"] == ["bounced", "blocked", "complained"]


def test_a_1_mb_body_of_events_is_taken_whole(client, ledger):
    emails = [f"c{i}@example.com" for i in range(2000)]
    ids = sent(ledger, "run", *emails)
    events = [sendgrid_event("delivered", ids[e], response="250 " + "x" * 300) for e in emails]
    body = json.dumps(events).encode()
    assert 1_000_000 <= len(body) < 2_000_000
    answer = client.post("/events/sendgrid", content=body, headers=SENDGRID.headers(body))
    assert answer.json()["applied"] == 2000
    with ledger.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(outcome_inbox)).scalar() == 0
    too_big = b"[" + b" " * (6 * 1024 * 1024) + b"]"
    assert client.post("/events/sendgrid", content=too_big, headers=SENDGRID.headers(too_big)).status_code == 413


def test_one_click_unsubscribe(client, ledger):
    ids = sent(ledger, "run", "a@example.com")
    link = list_unsubscribe_headers("a@example.com", UNSUBSCRIBE)["List-Unsubscribe"][1:-1]
    page = client.get(link)
    assert page.status_code == 200 and "<form method='post'" in page.text and "a@example.com" in page.text
    assert contact_status(ledger, "a@example.com") == "sent", "a GET (a link scanner) unsubscribes nobody"
    answer = client.post(link, data={"List-Unsubscribe": "One-Click"})
    assert answer.status_code == 200 and "Unsubscribed" in answer.text
    assert client.post(link, data={"List-Unsubscribe": "One-Click"}).status_code == 200, "idempotent"
    assert contact_status(ledger, "a@example.com") == "unsubscribed"
    post_sendgrid(client, [sendgrid_event("delivered", ids["a@example.com"])])
    assert contact_status(ledger, "a@example.com") == "unsubscribed"
    forged = link.replace("token=", "token=x")
    assert client.post(forged).status_code == 403 and client.get(forged).status_code == 403


def test_a_late_bounce_webhook_after_the_run_ended_keeps_the_contact_from_later_runs(client, ledger):
    from tests.support.ledger import stage_and_claim

    ids = sent(ledger, "run", "a@example.com")
    post_sendgrid(client, [sendgrid_event("delivered", ids["a@example.com"])])
    ledger.finish_run("run")
    body = mailgun_body("mg-key", "failed", ids["a@example.com"], severity="permanent", reason="bounce")
    assert client.post("/events/mailgun", content=body).json()["applied"] == 1
    assert contact_status(ledger, "a@example.com") == "bounced"
    later = stage_and_claim(ledger, "later", ["a@example.com"])
    assert (later.owned, later.batches) == (0, [])
