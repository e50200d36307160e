"""Bounce reports cannot be forged from an address (issue 30, item 3c): anybody can mail the bounce
mailbox and compute an attempt's idempotency key from an address, so with a deployment secret every
Message-ID (and DSN envelope id) carries a keyed tag of the key, and a report is believed only with it.
Attempts sent before tags keep matching by their untagged Message-ID, with no migration."""

from __future__ import annotations

import time

from include.mocks.smtp_relay.relay import delivery_report
from tests.support.ledger import contact_status, stage_and_claim
from tests.support.smtp_relay import FROM_EMAIL, launch_relay
from welcome_mailer.ledger import AcceptedAttempt
from welcome_mailer.outcomes.dsn import _parsed_report, events_of, parse_report
from welcome_mailer.transports import OutgoingMessage
from welcome_mailer.transports.smtp import SmtpEmailProvider, SmtpSettings, message_id, render_message
from welcome_mailer.vocabulary import idempotency_key, key_from_message_id, tag_key

KEY_OF_TAGS = tag_key(b"the deployment's erase key")
TAGGED = SmtpSettings(host="relay", from_email=FROM_EMAIL, key_of_tags=KEY_OF_TAGS)
UNTAGGED = SmtpSettings(host="relay", from_email=FROM_EMAIL)


def bounce_of(settings: SmtpSettings, email: str, key: str) -> bytes:
    """The relay's report for a message rendered with ``settings`` (a forger renders it without the tag)."""
    original = render_message(settings, OutgoingMessage(email, "Welcome", "Hi", key))
    return delivery_report(original, email, "5.1.1", "550 5.1.1 user unknown", "mx.example")


def events(raw: bytes):
    return events_of(parse_report(raw), key_of_tags=KEY_OF_TAGS, from_email=FROM_EMAIL)


def test_the_message_id_carries_a_tag_that_readers_of_the_key_skip():
    key = idempotency_key("ann@example.com", 1)
    tagged = message_id(key, FROM_EMAIL, KEY_OF_TAGS)
    assert tagged.startswith(f"<{key}.") and tagged != message_id(key, FROM_EMAIL)
    assert key_from_message_id(tagged) == key, "webhook parsers and the ledger still find the key"
    assert message_id(key, FROM_EMAIL, tag_key(b"another secret")) != tagged
    report = bounce_of(TAGGED, "ann@example.com", key)
    assert parse_report(report).keys == _parsed_report(report).keys == (tagged[1:].partition("@")[0],)


def test_a_report_is_believed_with_the_tag_and_a_forged_one_is_not(ledger):
    emails = ["ann@example.com", "victim@example.com", "old@example.com"]
    claimed = stage_and_claim(ledger, "run", emails)
    attempts = ledger.start_attempts("run", claimed.batches[0])
    keys = {a.email: a.idempotency_key for a in attempts}
    sent_ids = {e: message_id(keys[e], FROM_EMAIL, KEY_OF_TAGS) for e in ("ann@example.com", "victim@example.com")}
    sent_ids["old@example.com"] = message_id(keys["old@example.com"], FROM_EMAIL)  # sent before tags
    ledger.record_sent("run", [AcceptedAttempt(e, 1, sent_ids[e]) for e in emails])

    genuine = events(bounce_of(TAGGED, "ann@example.com", keys["ann@example.com"]))
    assert [e.idempotency_key for e in genuine] == [keys["ann@example.com"]]
    # The forger computes the victim's key from the address, but cannot tag it.
    forged = events(bounce_of(UNTAGGED, "victim@example.com", idempotency_key("victim@example.com", 1)))
    wrong_tag = bounce_of(TAGGED, "victim@example.com", keys["victim@example.com"]).replace(
        sent_ids["victim@example.com"][1:-1].encode(), f"{keys['victim@example.com']}.0123456789abcdef@x".encode()
    )
    assert events(wrong_tag) == [], "a wrong tag is not believed"
    old = events(bounce_of(UNTAGGED, "old@example.com", keys["old@example.com"]))
    counts = ledger.record_outcomes([*genuine, *forged, *old])
    assert (counts.applied, counts.inboxed) == (2, 1), "the forged report matches no attempt"
    assert contact_status(ledger, "ann@example.com") == "bounced"
    assert contact_status(ledger, "victim@example.com") == "sent", "nobody's welcome email is stopped by a forgery"
    assert contact_status(ledger, "old@example.com") == "bounced", "an attempt sent before tags still matches"


def test_without_a_secret_reports_match_by_key_as_before():
    key = idempotency_key("ann@example.com", 1)
    [event] = events_of(parse_report(bounce_of(UNTAGGED, "ann@example.com", key)))
    assert (event.outcome, event.idempotency_key) == ("bounced", key)


def test_the_mock_relays_own_report_carries_the_tag_and_is_believed(tmp_path):
    """End to end without a mailbox server: the relay's report (returned headers, Original-Envelope-Id)
    for a tagged message, read from its Maildir, names the attempt."""
    maildir = tmp_path / "maildir"
    relay = launch_relay(tmp_path, maildir, delivered_rate=0, bounced_rate=1, blocked_rate=0, in_dialogue_rate=0,
                         report_min_seconds=0, report_max_seconds=0)  # fmt: skip
    key = idempotency_key("ann@example.com", 1)
    settings = SmtpSettings(host="127.0.0.1", port=relay.port, from_email=FROM_EMAIL, use_ssl=False,
                            starttls=False, timeout=10, key_of_tags=KEY_OF_TAGS)  # fmt: skip
    try:
        with SmtpEmailProvider(settings) as transport:
            [result] = transport.send_batch([OutgoingMessage("ann@example.com", "Welcome", "Hi", key)])
        deadline = time.monotonic() + 20
        while not list((maildir / "new").glob("*")) and time.monotonic() < deadline:
            time.sleep(0.1)
        [report] = [path.read_bytes() for path in (maildir / "new").glob("*")]
    finally:
        relay.stop()
    assert result.message_id == message_id(key, FROM_EMAIL, KEY_OF_TAGS)
    [event] = events(report)
    assert (event.outcome, event.idempotency_key) == ("bounced", key)
    # the same report with the tag cut off the returned Message-ID: it names only an untagged (older) send
    [untagged] = events(report.replace(result.message_id[1:-1].encode(), f"{key}@x".encode()))
    assert (untagged.idempotency_key, untagged.provider_message_id) == (None, message_id(key, FROM_EMAIL))
