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


def test_a_postfix_success_report_is_a_delivery():
    """Postfix's "Successful Mail Delivery Report" (NOTIFY=SUCCESS, RET=HDRS, ENVID given)."""
    report = parse_report((SAMPLES / "postfix_delivered.eml").read_bytes())
    assert report.keys == (K1,)
    [found] = report.recipients
    assert (found.recipient, found.action, found.status) == ("ann@example.org", "delivered", "2.0.0")
    [event] = events_of(report)
    assert (event.outcome, event.idempotency_key, event.source) == ("delivered", K1, "dsn")


def test_a_relayed_report_is_a_delivery():
    """Postfix says "relayed" when the next hop does not offer DSN (most mailbox providers)."""
    raw = (SAMPLES / "postfix_delivered.eml").read_bytes().replace(b"Action: delivered", b"Action: relayed")
    [event] = events_of(parse_report(raw))
    assert (event.outcome, event.idempotency_key) == ("delivered", K1)


def test_the_envelope_id_names_the_attempt_when_the_headers_are_cut():
    raw = (SAMPLES / "postfix_delivered.eml").read_bytes()
    cut = raw.split(b"Content-Description: Message Headers")[0] + b"--4B2C81E0A77.1795939262/smtp.mailer.example--\n"
    cut = cut.replace(b"<welcome-", b"<other-")  # no Message-ID of ours left anywhere
    assert parse_report(cut).keys == (K1,)


class FakeMailbox:
    """Just enough IMAP for DsnSource.read_mailbox: one folder holding the given reports."""

    def __init__(self, reports: list[bytes]) -> None:
        self.reports = {str(n).encode(): raw for n, raw in enumerate(reports, 1)}

    def select(self, _folder):
        return "OK", [str(len(self.reports)).encode()]

    def uid(self, command, *args):
        if command == "SEARCH":
            return "OK", [b" ".join(self.reports)]
        if command == "FETCH":
            wanted = args[0].split(b",")
            return "OK", [(b"%s (UID %s BODY[] {1}" % (n, n), self.reports[n]) for n in wanted]
        return "OK", [None]


def test_the_source_records_a_delivery_as_soon_as_it_reads_the_report(monkeypatch):
    """A success report is a delivery at once: no waiting for the settle time (30 minutes here)."""
    import contextlib
    from datetime import timedelta

    from welcome_mailer.outcomes.dsn import DsnSource, MailboxSettings
    from welcome_mailer.vocabulary import PendingMessage, utcnow

    pending = PendingMessage("ann@example.org", 1, "<x@mailer.example>", sent_at=utcnow())
    raw = (SAMPLES / "postfix_delivered.eml").read_bytes().replace(K1.encode(), pending.idempotency_key.encode())
    source = DsnSource(MailboxSettings(host="imap.invalid"), settle=timedelta(minutes=30))
    monkeypatch.setattr(source, "_imap", lambda: contextlib.nullcontext(FakeMailbox([raw])))
    [event] = source.poll([pending])
    assert (event.outcome, event.idempotency_key, event.source) == ("delivered", pending.idempotency_key, "dsn")
    assert "delivered 2.0.0" in event.detail


def mock_relay_reports() -> list[bytes]:
    from include.mocks.smtp_relay.relay import delivery_report
    from welcome_mailer.transports import OutgoingMessage
    from welcome_mailer.transports.smtp import SmtpSettings, render_message

    settings = SmtpSettings("relay.example", from_email="welcome@mailer.example", from_name="Welcome Team")
    message = render_message(settings, OutgoingMessage("ann@example.org", "Welcome!", "Hi Ann, Welcome!", K1, "Ann"))
    return [
        delivery_report(message, "ann@example.org", "2.0.0", "250 2.0.0 Ok", "relay.test", "delivered", K1),
        delivery_report(message, "ann@example.org", "5.1.1", "550 5.1.1 User unknown", "relay.test"),
    ]


@pytest.mark.parametrize("sample", [*sorted(p.name for p in SAMPLES.glob("*.eml")), "mock-delivered", "mock-failed"])
def test_the_quick_reading_agrees_with_the_email_package(sample):
    """Reports are read without the email package when their shape allows (a mailbox holds one report per
    message when successes are reported): the quick reading gives up or agrees, on every shape we have."""
    from welcome_mailer.outcomes.dsn import _parsed_report, _quick_report

    mock = dict(zip(["mock-delivered", "mock-failed"], mock_relay_reports(), strict=True))
    raw = mock.get(sample) or (SAMPLES / sample).read_bytes()
    quick = _quick_report(raw)
    if sample in ("postfix_user_unknown.eml", "postfix_delivered.eml", "mock-delivered", "mock-failed"):
        assert quick is not None, "the common shape is read quickly"
    if quick is not None:
        assert quick == _parsed_report(raw)
    for cut in (raw.replace(b"Message-ID: <welcome-", b"Message-ID: <other-"), raw[: len(raw) // 2]):
        quick = _quick_report(cut)
        assert quick is None or quick == _parsed_report(cut)
