"""The SMTP transport and the bounce mailbox against the mock relay and a real IMAP server (Dovecot):
every reply and report classification, dropped connections, STARTTLS and AUTH, proven from the relay's
own log (raw bytes included) and the ledger."""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import timedelta

import pytest
from sqlalchemy import select

from tests.support.smtp_relay import (  # noqa: F401 (fixtures)
    FROM_EMAIL,
    assert_relay_log_invariants,
    by_recipient,
    imap,
    self_signed_certificate,
    start_relay,
)
from welcome_mailer import pipeline
from welcome_mailer.ledger import send_attempts, sent_contacts
from welcome_mailer.outcomes.dsn import DsnSource, MailboxSettings
from welcome_mailer.transports.smtp import SmtpEmailProvider, SmtpSettings

MAX_ATTEMPTS = 3


@pytest.fixture
def contact_file(tmp_path):
    path = tmp_path / "contacts.csv"
    path.write_text("".join(f"User {i}, user{i}@example.com\n" for i in range(150)))
    return path


def settings_for(relay, **overrides) -> SmtpSettings:
    values = {"host": "127.0.0.1", "port": relay.port, "from_email": FROM_EMAIL, "from_name": "Welcome Team"}
    values |= {"use_ssl": False, "starttls": False, "timeout": 10, "retry_limit": 3, "max_connections": 3}
    return SmtpSettings(**(values | overrides))


def mailbox_source(imap_server, settle_seconds: float = 1.5) -> DsnSource:
    mailbox = MailboxSettings("127.0.0.1", imap_server.port, imap_server.login, imap_server.password, use_ssl=False)
    return DsnSource(mailbox, timedelta(seconds=settle_seconds))


def run_through(ledger, transport, sources, run_id, path, tmp_path, max_attempts=MAX_ATTEMPTS) -> None:
    """The DAG's steps, without Airflow: parse, claim, send, then the resend sensor's pokes until done."""
    ledger.renew_lease(run_id)
    pipeline.parse_file(ledger, run_id, path, tmp_path / f"{run_id}-rejected.csv")
    claimed = pipeline.claim_contacts(ledger, run_id, 50, 1024)
    for batch in claimed["batches"]:
        pipeline.send_batch(ledger, transport, run_id, batch, 50)
    deadline = time.monotonic() + 90
    while not pipeline.resend_blocked(
        ledger,
        transport,
        sources,
        run_id,
        max_attempts=max_attempts,
        batch_size=50,
        max_batches=1024,
        backoff_seconds=0.0,
        linger_seconds=0.5,
        poll_seconds=0.1,
    ):
        assert time.monotonic() < deadline, "the run did not finish"
        time.sleep(0.2)
    ledger.close_out(run_id, max_attempts)


def ledger_rows(ledger):
    with ledger.engine.connect() as conn:
        contacts = {r.email: r for r in conn.execute(select(sent_contacts))}
        attempts = {(r.email, r.attempt): r for r in conn.execute(select(send_attempts))}
    return contacts, attempts


@pytest.mark.parametrize("pipelining", [1, 0], ids=["pipelining", "one-by-one"])
def test_every_reply_and_report_becomes_its_outcome(ledger, start_relay, imap, contact_file, tmp_path, pipelining):  # noqa: F811
    relay = start_relay(
        report_min_seconds=0.2, report_max_seconds=0.8, blocked_rate=0.3, delivered_rate=0.6, pipelining=pipelining
    )
    with SmtpEmailProvider(settings_for(relay)) as transport:
        run_through(ledger, transport, [mailbox_source(imap)], "run", contact_file, tmp_path)
    entries = relay.messages()
    expected = {f"user{i}@example.com": f"User {i}" for i in range(150)}
    finals = assert_relay_log_invariants(entries, expected, MAX_ATTEMPTS)
    assert finals.get("blocked", 0) > 0 and finals.get("bounced", 0) > 0 and finals.get("delivered", 0) > 0

    contacts, attempts = ledger_rows(ledger)
    stages = defaultdict(int)
    for address, history in by_recipient(entries).items():
        last = history[-1]["outcome"]
        assert contacts[address].status == ("failed" if last == "blocked" else last)
        assert contacts[address].attempts == len(history)
        for number, entry in enumerate(history, 1):
            attempt = attempts[(address, number)]
            stages[entry["outcome"], entry["stage"]] += 1
            if entry["stage"] == "rcpt" and entry["outcome"] == "bounced":  # 550 5.1.1 to RCPT
                assert (attempt.status, attempt.provider_message_id) == ("refused", None)
                assert "550 5.1.1" in attempt.error
            else:
                assert attempt.status == entry["outcome"], (entry["stage"], entry["reply"])
            if entry["received"]:
                assert attempt.provider_message_id == entry["message_id"]
                assert entry["message_id"] == f"<{attempt.idempotency_key}@mailer.example>"
    for outcome_stage in [
        ("bounced", "rcpt"),  # 550 5.1.1 in the dialogue
        ("bounced", "report"),  # a report: failed 5.1.1
        ("blocked", "rcpt"),  # 450 4.7.1
        ("blocked", "data"),  # 550 5.7.1 after the data: a reputation block, blocked by default
        ("blocked", "report"),  # a report: failed 4.4.7
        ("delivered", "none"),  # no report within the settle time
    ]:
        assert stages[outcome_stage] > 0, f"no {outcome_stage} in this run: {dict(stages)}"
    assert stored(imap.maildir) == [], "every report was read once and filed"
    assert ledger.inbox_size() == 0, "outcomes learnt at send time were applied with their sends"


def test_a_connection_dropped_after_the_data_never_makes_a_second_email(
    ledger,
    start_relay,  # noqa: F811
    contact_file,
    tmp_path,
):
    relay = start_relay(drop_after_data_rate=0.3, delivered_rate=1.0, bounced_rate=0, blocked_rate=0)
    with SmtpEmailProvider(settings_for(relay)) as transport:
        ledger.renew_lease("run")
        pipeline.parse_file(ledger, "run", contact_file, tmp_path / "rejected.csv")
        claimed = pipeline.claim_contacts(ledger, "run", 50, 1024)
        results = [pipeline.send_batch(ledger, transport, "run", b, 50) for b in claimed["batches"]]
        again = [pipeline.send_batch(ledger, transport, "run", b, 50) for b in claimed["batches"]]  # a retry
    entries = relay.messages()
    dropped = {e["to"] for e in entries if e["dropped"]}
    assert len(entries) == len({e["to"] for e in entries}) == 150, "each contact received exactly one message"
    assert 20 < len(dropped) < 80
    assert sum(r["unconfirmed"] for r in results) == len(dropped)
    assert sum(r["sent"] for r in again) == 0, "the retry sends nothing"
    contacts, attempts = ledger_rows(ledger)
    assert {e for e, row in contacts.items() if row.status == "unconfirmed"} == dropped
    assert all(attempts[(e, 1)].status == "unconfirmed" for e in dropped)
    assert ledger.run_summary("run")["by_status"]["unconfirmed"] == len(dropped)


@pytest.mark.parametrize("pipelining", [1, 0], ids=["pipelining", "one-by-one"])
def test_a_reply_slower_than_the_timeout_after_the_data_is_unconfirmed_never_a_second_email(
    ledger,
    start_relay,  # noqa: F811
    tmp_path,
    pipelining,
):
    """A live connection whose reply to the data comes after the client's timeout: the message may have
    gone out (the relay kept it), so it is unconfirmed, and neither the send's retry nor the resend phase
    sends it again. With PIPELINING the next message's envelope went out with that data: it is sent on a
    new connection, once."""
    contacts_csv = tmp_path / "contacts.csv"
    contacts_csv.write_text("".join(f"User {i}, user{i}@example.com\n" for i in range(30)))
    relay = start_relay(slow_data_reply_rate=0.25, slow_reply_seconds=2.5, pipelining=pipelining,
                        delivered_rate=1.0, bounced_rate=0, blocked_rate=0)  # fmt: skip
    with SmtpEmailProvider(settings_for(relay, timeout=1.0)) as transport:
        ledger.renew_lease("run")
        pipeline.parse_file(ledger, "run", contacts_csv, tmp_path / "rejected.csv")
        claimed = pipeline.claim_contacts(ledger, "run", 50, 1024)
        results = [pipeline.send_batch(ledger, transport, "run", b, 50) for b in claimed["batches"]]
        again = [pipeline.send_batch(ledger, transport, "run", b, 50) for b in claimed["batches"]]  # a retry
        assert pipeline.resend_blocked(ledger, transport, [], "run", max_attempts=MAX_ATTEMPTS, batch_size=50,
                                       max_batches=1024, backoff_seconds=0.0, linger_seconds=0.0,
                                       poll_seconds=0.0) is False  # fmt: skip
    time.sleep(3)  # every slow reply has come (to connections long closed)
    entries = relay.messages()
    slow = {e["to"] for e in entries if e["slow_reply"]}
    received = [e["to"] for e in entries if e["received"]]
    assert sorted(received) == sorted(f"user{i}@example.com" for i in range(30)), "one message each, none twice"
    assert 3 <= len(slow) <= 15
    assert sum(r["unconfirmed"] for r in results) == len(slow)
    assert sum(r["sent"] for r in again) == 0, "the retry sends nothing"
    contacts, attempts = ledger_rows(ledger)
    assert {e for e, row in contacts.items() if row.status == "unconfirmed"} == slow
    assert all(attempts[(e, 1)].status == "unconfirmed" and (e, 2) not in attempts for e in slow)
    accepted = {
        e for e, row in contacts.items() if row.status == "sending" and attempts[(e, row.attempts)].status == "sent"
    }
    assert accepted == set(received) - slow, "accepted, waiting for an outcome (shown as sent)"


def test_a_421_at_connect_is_retried_without_a_second_email(ledger, start_relay, contact_file, tmp_path):  # noqa: F811
    relay = start_relay(connect_421_rate=0.5, delivered_rate=1.0, bounced_rate=0, blocked_rate=0)
    with SmtpEmailProvider(settings_for(relay, retry_limit=8, max_connections=2)) as transport:
        ledger.renew_lease("run")
        pipeline.parse_file(ledger, "run", contact_file, tmp_path / "rejected.csv")
        claimed = pipeline.claim_contacts(ledger, "run", 50, 1024)
        sent = sum(pipeline.send_batch(ledger, transport, "run", b, 50)["sent"] for b in claimed["batches"])
    entries = relay.messages()
    assert sent == 150 and len(entries) == len({e["to"] for e in entries}) == 150


def test_starttls_and_auth(start_relay, tmp_path):  # noqa: F811
    from welcome_mailer.transports import OutgoingMessage

    cert, key = self_signed_certificate(tmp_path)
    relay = start_relay(tls_cert=cert, tls_key=key, login="mailer", password="s3cret", delivered_rate=1.0)
    # The relay requires STARTTLS before AUTH, and AUTH before MAIL.
    message = OutgoingMessage("ann@example.com", "Welcome!", "Hi Ann, Welcome!", "welcome-" + "a" * 40 + "-1", "Ann")
    secure = settings_for(relay, starttls=True, verify_certificate=False, login="mailer", password="s3cret")
    with SmtpEmailProvider(secure) as transport:
        [result] = transport.send_batch([message])
    assert result.message_id and result.error is None
    wrong = settings_for(
        relay, starttls=True, verify_certificate=False, login="mailer", password="wrong", retry_limit=1
    )
    with SmtpEmailProvider(wrong) as transport:
        [refused] = transport.send_batch([message])
    assert refused.outcome == "blocked" and "relay unreachable" in refused.error
    plain = settings_for(relay, retry_limit=1)  # no STARTTLS: the relay refuses to go on
    with SmtpEmailProvider(plain) as transport:
        [refused] = transport.send_batch([message])
    assert refused.outcome == "blocked"
    assert [e["to"] for e in relay.messages()] == ["ann@example.com"], "only the authenticated send got through"


def test_reports_that_match_nothing_or_do_not_parse_are_kept_aside(imap):  # noqa: F811
    from pathlib import Path

    samples = Path(__file__).parents[1] / "unit" / "dsn"
    for name in ("garbage.eml", "auto_reply.eml", "not_ours.eml", "postfix_user_unknown.eml"):
        target = imap.maildir / "new" / f"1.{name}.test"
        target.write_bytes((samples / name).read_bytes())
    source = mailbox_source(imap)
    events = source.read_mailbox()
    source.acknowledge()
    assert [e.outcome for e in events] == ["bounced"] and source.unmatched == 3
    assert source.read_mailbox() == [], "each report is read once"
    assert len(stored(imap.maildir / "welcome-mailer-unmatched")) == 3
    assert len(stored(imap.maildir / "welcome-mailer-processed")) == 1
    assert stored(imap.maildir) == []


def stored(maildir) -> list:
    return [*(maildir / "new").iterdir(), *(maildir / "cur").iterdir()]


def test_an_unreachable_mailbox_delays_outcomes_and_never_fails_the_poll():
    from include.local.net import free_port
    from welcome_mailer.vocabulary import PendingMessage, utcnow

    closed = MailboxSettings("127.0.0.1", free_port(), "bounces", "pw", use_ssl=False, timeout=2)
    source = DsnSource(closed, timedelta(seconds=0))
    pending = [PendingMessage("a@example.com", 1, "<id>", utcnow() - timedelta(hours=1))]
    assert list(source.poll(pending)) == [], "no settle while reports cannot be read"
    assert [e.outcome for e in DsnSource(None, timedelta(seconds=0)).poll(pending)] == ["delivered"]


def test_success_reports_deliver_long_before_the_settle_time(ledger, start_relay, imap, contact_file, tmp_path):  # noqa: F811
    """The relay offers DSN: the transport asks for success reports (RFC 3461), the relay mails one per
    delivery (Action: delivered, 2.0.0), and the source records it as soon as it reads it. The settle time
    is ten minutes here: the run can only finish (within the 90 s of run_through) from the reports."""
    relay = start_relay(report_min_seconds=0.2, report_max_seconds=0.8, blocked_rate=0.2, delivered_rate=0.7)
    with SmtpEmailProvider(settings_for(relay)) as transport:
        run_through(ledger, transport, [mailbox_source(imap, settle_seconds=600)], "run", contact_file, tmp_path)
    entries = relay.messages()
    expected = {f"user{i}@example.com": f"User {i}" for i in range(150)}
    finals = assert_relay_log_invariants(entries, expected, MAX_ATTEMPTS)
    assert finals.get("delivered", 0) > 0 and finals.get("bounced", 0) > 0
    _, attempts = ledger_rows(ledger)
    for entry in entries:
        if not entry["received"]:
            continue
        key = entry["idempotency_key"]
        assert entry["dsn"] == {"ret": "HDRS", "envid": key, "notify": "SUCCESS,FAILURE", "orcpt": entry["to"]}
        if entry["outcome"] == "delivered":
            assert entry["reported"], "every delivery asked for was reported"
            attempt = attempts[(entry["to"], int(key.rpartition("-")[2]))]
            assert attempt.status == "delivered"
            assert (attempt.updated_at - attempt.created_at).total_seconds() < 30, "recorded from its report"
    assert stored(imap.maildir) == [], "every report was read once and filed"
    assert len(stored(imap.maildir / "welcome-mailer-processed")) == sum(e["reported"] for e in entries)


def test_without_dsn_deliveries_come_from_the_settle_time(ledger, start_relay, imap, contact_file, tmp_path):  # noqa: F811
    relay = start_relay(dsn=0, report_min_seconds=0.2, report_max_seconds=0.8, delivered_rate=0.9, bounced_rate=0.1)
    with SmtpEmailProvider(settings_for(relay)) as transport:
        run_through(ledger, transport, [mailbox_source(imap, settle_seconds=1.5)], "run", contact_file, tmp_path)
    entries = relay.messages()
    assert all(e["dsn"] == {"ret": "", "envid": "", "notify": "", "orcpt": ""} for e in entries), "nothing asked"
    assert not any(e["reported"] for e in entries if e["outcome"] == "delivered"), "no success report"
    contacts, _ = ledger_rows(ledger)
    assert {c.status for c in contacts.values()} <= {"delivered", "bounced"}
    assert sum(c.status == "delivered" for c in contacts.values()) > 100


def test_a_block_report_waiting_in_the_mailbox_wins_over_the_settle_time_and_a_late_one_does_not(
    ledger,
    start_relay,  # noqa: F811
    imap,  # noqa: F811
    tmp_path,
):
    """The race between the settle time and a late block report. A poll reads the mailbox before it settles
    anything, and settles none of the messages it read a report for: a report already in the mailbox wins
    (the contact is blocked, resent later). A block report read after the settle time counted the message
    delivered changes nothing (blocked is weaker than delivered); a bounce report still overrules it. Once
    nothing of the run is pending its sensors stop polling: such late reports are read by a later run's."""
    from include.mocks.smtp_relay.relay import Maildir, delivery_report

    contacts_csv = tmp_path / "contacts.csv"
    contacts_csv.write_text("Ann, ann@example.com\nBob, bob@example.com\n")
    relay = start_relay(dsn=0, delivered_rate=1.0, bounced_rate=0, blocked_rate=0)  # no report of its own
    with SmtpEmailProvider(settings_for(relay)) as transport:
        ledger.renew_lease("run")
        pipeline.parse_file(ledger, "run", contacts_csv, tmp_path / "rejected.csv")
        [batch] = pipeline.claim_contacts(ledger, "run", 50, 1024)["batches"]
        assert pipeline.send_batch(ledger, transport, "run", batch, 50)["sent"] == 2
    raw = {e["to"]: e["raw"] for e in relay.messages()}
    mailbox = Maildir(imap.maildir)

    def report(address: str, status: str) -> None:
        diagnostic = "452 4.2.2 Mailbox full" if status.startswith("4.") else "550 5.1.1 User unknown"
        mailbox.deliver(delivery_report(raw[address], address, status, diagnostic, "mx.test"))

    source = mailbox_source(imap, settle_seconds=0.5)
    report("ann@example.com", "4.2.2")  # in the mailbox before the settle time is over
    time.sleep(1.0)  # both messages are past their settle time now
    pipeline.collect_outcomes(ledger, [source], "run")
    contacts, attempts = ledger_rows(ledger)
    assert contacts["ann@example.com"].status == "blocked", "the report was read before anything was settled"
    assert attempts[("ann@example.com", 1)].status == "blocked"
    assert contacts["bob@example.com"].status == "delivered", "no report: the settle time"

    def later_poll() -> None:  # this run has nothing pending now: a later run's sensor reads the mailbox
        ledger.record_outcomes(source.poll(ledger.pending_messages("run")))
        source.acknowledge()

    report("bob@example.com", "4.2.2")  # too late: the settle time counted it delivered
    later_poll()
    contacts, attempts = ledger_rows(ledger)
    assert contacts["bob@example.com"].status == "delivered" and attempts[("bob@example.com", 1)].status == "delivered"
    assert ledger.count_resendable("run", MAX_ATTEMPTS) == 1, "only Ann is resent"

    report("bob@example.com", "5.1.1")  # a bounce overrules the delivery the settle time assumed
    later_poll()
    contacts, _ = ledger_rows(ledger)
    assert contacts["bob@example.com"].status == "bounced"
    assert stored(imap.maildir) == [], "every report was read once"
