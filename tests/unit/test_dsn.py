"""Bounce reports (RFC 3464) in the shapes real relays send: what each becomes, and what is kept aside."""

from __future__ import annotations

from pathlib import Path

import pytest

from welcome_mailer.outcomes.dsn import NotADeliveryReport, RecipientStatus, events_of, outcome_of, parse_report

SAMPLES = Path(__file__).parent / "dsn"
K1 = "welcome-0123456789abcdef0123456789abcdef01234567-1"
K2 = "welcome-89abcdef0123456789abcdef0123456789abcdef-2"
K3 = "welcome-fedcba9876543210fedcba9876543210fedcba98-3"


@pytest.mark.parametrize(
    ("sample", "key", "recipient", "status", "outcome"),
    [
        ("postfix_user_unknown.eml", K1, "someone@gmail.com", "5.1.1", "bounced"),  # message/rfc822 returned
        ("exchange_recipient_not_found.eml", K2, "frank@contoso.test", "5.1.10", "bounced"),  # rfc822-headers
        ("gmail_mailbox_full.eml", K3, "ann@gmail.example", "4.2.2", "blocked"),  # failed with 4.x.x
    ],
)
def test_real_report_shapes(sample, key, recipient, status, outcome):
    report = parse_report((SAMPLES / sample).read_bytes())
    assert report.keys == (key,)
    [found] = report.recipients
    assert (found.recipient, found.action, found.status) == (recipient, "failed", status)
    [event] = events_of(report)
    assert (event.outcome, event.idempotency_key, event.source) == (outcome, key, "dsn")
    assert status in event.detail


def test_a_delayed_report_is_no_outcome_yet():
    report = parse_report((SAMPLES / "postfix_delayed.eml").read_bytes())
    assert report.recipients[0].action == "delayed"
    assert events_of(report) == []


def test_a_report_about_someone_elses_message_names_no_attempt():
    assert parse_report((SAMPLES / "not_ours.eml").read_bytes()).keys == ()


@pytest.mark.parametrize("sample", ["garbage.eml", "auto_reply.eml"])
def test_what_is_not_a_report_is_refused(sample):
    with pytest.raises(NotADeliveryReport):
        parse_report((SAMPLES / sample).read_bytes())


@pytest.mark.parametrize(
    ("action", "status", "policy", "outcome"),
    [
        ("failed", "5.1.1", "blocked", "bounced"),
        ("failed", "5.2.1", "blocked", "bounced"),
        ("failed", "", "blocked", "bounced"),  # the relay gave up, whatever the code
        ("failed", "4.4.7", "blocked", "blocked"),
        ("failed", "5.7.1", "blocked", "blocked"),  # reputation: clears, so a new email later
        ("failed", "5.7.1", "bounced", "bounced"),  # ... unless the operator says otherwise
        ("delivered", "2.0.0", "blocked", "delivered"),
        ("relayed", "2.0.0", "blocked", "delivered"),
        ("expanded", "2.0.0", "blocked", "delivered"),
        ("delayed", "4.4.1", "blocked", None),
    ],
)
def test_what_each_report_becomes(action, status, policy, outcome):
    assert outcome_of(RecipientStatus("a@example.com", action, status), policy) == outcome
