"""Mailgun signs only timestamp + token: a captured signature is honoured once (issue 30, item 3a)."""

from __future__ import annotations

import json
import time

import pytest
from sqlalchemy import func, select

from tests.support.events_app import events_client, logged_requests
from tests.support.ledger import contact_status, sent
from tests.support.webhook_payloads import mailgun_body
from welcome_mailer.ledger.schema import webhook_tokens
from welcome_mailer.outcomes.webhooks import Refused
from welcome_mailer.outcomes.webhooks.replay import used_once


@pytest.fixture
def client(ledger):
    with events_client(ledger) as client:
        yield client


def test_the_same_signed_mailgun_body_posted_twice_is_refused_the_second_time(client, ledger):
    ids = sent(ledger, "run", "a@example.com")
    body = mailgun_body("mg-key", "delivered", ids["a@example.com"])
    assert client.post("/events/mailgun", content=body).json()["applied"] == 1
    again = client.post("/events/mailgun", content=body)
    assert again.status_code == 403 and "already used" in again.text
    assert len(logged_requests(ledger)) == 1, "the replay is not stored"


def test_a_captured_mailgun_signature_with_another_event_is_refused(client, ledger):
    ids = sent(ledger, "run", "a@example.com", "victim@example.com")
    captured = json.loads(mailgun_body("mg-key", "delivered", ids["a@example.com"]))
    assert client.post("/events/mailgun", json=captured).status_code == 200
    forged = json.loads(mailgun_body("mg-key", "complained", ids["victim@example.com"]))
    forged["signature"] = captured["signature"]  # valid for timestamp + token, whatever the event
    answer = client.post("/events/mailgun", json=forged)
    assert answer.status_code == 403, answer.text
    assert contact_status(ledger, "victim@example.com") == "sent"


def test_a_request_that_failed_gives_its_token_back_for_the_providers_retry(ledger):
    stamp = str(int(time.time()))
    with pytest.raises(RuntimeError), used_once(ledger, "mailgun", "t" * 50, stamp, 60):
        raise RuntimeError("the ledger went away")
    with used_once(ledger, "mailgun", "t" * 50, stamp, 60):
        pass
    with pytest.raises(Refused) as refused, used_once(ledger, "mailgun", "t" * 50, stamp, 60):
        pass
    assert refused.value.status_code == 403


def test_tokens_are_kept_only_while_their_timestamp_is_accepted(ledger):
    old = str(int(time.time()) - 120)
    with used_once(ledger, "mailgun", "old-token", old, 60):
        pass
    with used_once(ledger, "mailgun", "new-token", str(int(time.time())), 60):
        pass
    with ledger.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(webhook_tokens)).scalar() == 1
