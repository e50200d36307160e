"""Throttling never costs an attempt: a provider that enforces a send rate or a quota the way SES does (the
mock relay answers 454 after the data and drops the message; the mock ESP answers 429 with Retry-After)
ends with one accepted message per contact, each its FIRST attempt, proven from the mocks' own logs."""

from __future__ import annotations

from collections import Counter

import pytest
from sqlalchemy import select

from tests.support.smtp_relay import FROM_EMAIL, launch_relay
from welcome_mailer import pipeline
from welcome_mailer.ledger import send_attempts, sent_contacts
from welcome_mailer.transports.http import HttpEmailProvider
from welcome_mailer.transports.smtp import SmtpEmailProvider, SmtpSettings

CONTACTS = 150
ALL_DELIVERED = {"delivered_rate": 1.0, "bounced_rate": 0, "blocked_rate": 0}


@pytest.fixture
def contact_file(tmp_path):
    path = tmp_path / "contacts.csv"
    path.write_text("".join(f"User {i}, user{i}@example.com\n" for i in range(CONTACTS)))
    return path


@pytest.fixture
def relay_for(tmp_path):
    started = []

    def start(**flags):
        started.append(launch_relay(tmp_path, tmp_path / "Maildir", **(ALL_DELIVERED | flags)))
        return started[-1]

    yield start
    for relay in started:
        relay.stop()


def send_all(ledger, transport, contact_file, tmp_path, batch_size=50) -> list[dict]:
    ledger.renew_lease("run")
    pipeline.parse_file(ledger, "run", contact_file, tmp_path / "rejected.csv")
    claimed = pipeline.claim_contacts(ledger, "run", batch_size, 1024)
    return [pipeline.send_batch(ledger, transport, "run", b, batch_size) for b in claimed["batches"]]


def assert_first_attempts_only(ledger) -> None:
    """In the ledger: every contact has one attempt, its first, accepted; nothing spent on throttling."""
    with ledger.engine.connect() as conn:
        contacts = conn.execute(select(sent_contacts.c.attempts, sent_contacts.c.claim_attempts)).all()
        attempts = conn.execute(select(send_attempts.c.attempt, send_attempts.c.status)).all()
    assert len(contacts) == CONTACTS and set(contacts) == {(1, 1)}, "a throttle spent an attempt"
    assert Counter(attempts) == {(1, "sent"): CONTACTS}


@pytest.mark.parametrize(
    ("limit", "reply"),
    [
        ({"max_messages_per_second": 40}, "Maximum sending rate exceeded"),
        ({"daily_quota": 60, "quota_window_seconds": 1.5}, "Daily message quota exceeded"),
    ],
    ids=["rate", "quota"],
)
def test_smtp_throttling_resends_the_same_attempt(ledger, relay_for, contact_file, tmp_path, limit, reply):
    relay = relay_for(**limit)
    settings = SmtpSettings(
        "127.0.0.1", relay.port, from_email=FROM_EMAIL, use_ssl=False, starttls=False, timeout=10, max_connections=4
    )
    with SmtpEmailProvider(settings) as transport:
        results = send_all(ledger, transport, contact_file, tmp_path)

    entries = relay.messages()
    throttled = [e for e in entries if e["throttled"]]
    kept = [e for e in entries if e["received"]]
    assert throttled and all(reply in e["reply"] and e["reply"].startswith("454") for e in throttled)
    assert sorted(e["to"] for e in kept) == sorted(f"user{i}@example.com" for i in range(CONTACTS)), (
        "one accepted message per contact"
    )
    assert all(e["idempotency_key"].endswith("-1") for e in entries), "every message sent is a first attempt"
    assert {e["message_id"] for e in throttled} <= {e["message_id"] for e in kept}, "the SAME message again"
    assert sum(r["sent"] for r in results) == CONTACTS
    assert sum(r["throttled_requests"] for r in results) > 0
    assert_first_attempts_only(ledger)


@pytest.mark.parametrize(
    "limit",
    [{"max_messages_per_second": 60}, {"daily_quota": 60, "quota_window_seconds": 1.5}],
    ids=["rate", "quota"],
)
def test_http_429_resends_the_same_attempt_after_retry_after(ledger, start_esp, contact_file, tmp_path, limit):
    esp = start_esp(hold_rate=0, **ALL_DELIVERED, **limit)
    with HttpEmailProvider(esp.url, esp.api_key) as transport:
        results = send_all(ledger, transport, contact_file, tmp_path, batch_size=30)

    messages = esp.messages()
    assert sorted(m["to"] for m in messages) == sorted(f"user{i}@example.com" for i in range(CONTACTS))
    assert all(m["idempotency_key"].endswith("-1") for m in messages)
    throttled = esp.client.get("/healthz").json()["throttled"]
    assert throttled > 0 and sum(r["throttled_requests"] for r in results) == throttled
    waited = sum(r["throttle_wait_seconds"] for r in results)
    assert waited >= 1.0, "Retry-After (whole seconds) was honoured"
    assert_first_attempts_only(ledger)
