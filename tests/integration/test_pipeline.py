"""The run's steps against the real mock ESP and a real ledger: retries and crashes never double a message."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from tests.support.invariants import assert_ledger_matches, assert_run_invariants, expected_contacts
from tests.support.runs import finish, resend_poke
from welcome_mailer import pipeline
from welcome_mailer.ledger import ledger_runs, send_attempts
from welcome_mailer.outcomes.http_lookup import HttpLookupSource
from welcome_mailer.transports.http import EspUnavailable, HttpEmailProvider, RetryPolicy
from welcome_mailer.vocabulary import utcnow

NO_RETRY = RetryPolicy(attempts=1)


@pytest.fixture
def contact_file(tmp_path):
    path = tmp_path / "contacts.csv"
    path.write_text("".join(f"User {i}, user{i}@example.com, 555\n" for i in range(120)) + "Bad Row, nope\n")
    return path


def parse_and_claim(ledger, run_id, path, tmp_path, batch_size=50):
    ledger.renew_lease(run_id)
    parsed = pipeline.parse_file(ledger, run_id, path, tmp_path / f"{run_id}-rejected.csv")
    return parsed, pipeline.claim_contacts(ledger, run_id, batch_size, 1024)


def test_a_send_retried_after_lost_responses_sends_each_attempt_once(
    ledger, ledger_url, start_esp, contact_file, tmp_path
):
    esp = start_esp(lose_response_rate=0.5, hold_rate=0, seed=11)
    parsed, claimed = parse_and_claim(ledger, "run", contact_file, tmp_path)
    assert parsed["rejected"] == 1 and claimed["to_send"] == 120
    fragile = HttpEmailProvider(esp.url, esp.api_key, retry=NO_RETRY)  # every lost response kills the "task"
    for batch_no in claimed["batches"]:
        for _try in range(50):  # Airflow's task retries
            try:
                pipeline.send_batch(ledger, fragile, "run", batch_no, 20)
                break
            except EspUnavailable:
                continue
    with HttpEmailProvider(esp.url, esp.api_key) as client:
        finish(ledger, client, "run")
    messages = esp.messages()
    assert_run_invariants(messages, expected_contacts(contact_file), max_attempts=5)
    assert_ledger_matches(ledger_url, messages)


def test_a_crash_between_recording_and_sending_is_recovered_by_the_next_run(
    ledger, ledger_url, esp, contact_file, tmp_path
):
    _, claimed = parse_and_claim(ledger, "crashed", contact_file, tmp_path)
    ledger.start_attempts("crashed", claimed["batches"][0])  # attempts recorded, then the worker died
    with ledger.engine.begin() as conn:  # its lease runs out
        conn.execute(update(ledger_runs).values(lease_expires_at=utcnow() - timedelta(seconds=1)))

    _, taken = parse_and_claim(ledger, "next", contact_file, tmp_path)
    assert taken["owned"] == 120 and taken["taken_over"] == 120
    with HttpEmailProvider(esp.url, esp.api_key) as client:
        for batch_no in taken["batches"]:
            pipeline.send_batch(ledger, client, "next", batch_no, 50)
        finish(ledger, client, "next")
    messages = esp.messages()
    assert_run_invariants(messages, expected_contacts(contact_file), max_attempts=5)
    assert_ledger_matches(ledger_url, messages)


def test_a_delivery_poke_counts_the_awaited_messages_once_a_poll(ledger, start_esp, contact_file, tmp_path):
    """A count of the messages without an outcome reads an index entry per message of the run: the poke
    counts once after each poll, and polls again on the last count (the run sends nothing meanwhile)."""
    esp = start_esp(hold_rate=1, hold_min_seconds=30, hold_max_seconds=30)
    _, claimed = parse_and_claim(ledger, "run", contact_file, tmp_path)
    counts, polls = [], []
    counted = ledger.count_awaiting_outcome
    ledger.count_awaiting_outcome = lambda run_id: counts.append(counted(run_id)) or counts[-1]
    with HttpEmailProvider(esp.url, esp.api_key) as client:
        for batch_no in claimed["batches"]:
            pipeline.send_batch(ledger, client, "run", batch_no, 50)
        source = HttpLookupSource(client)
        polled = source.poll
        source.poll = lambda pending: polls.append(1) or polled(pending)
        done = pipeline.await_delivery(ledger, [source], "run", 5, linger_seconds=0.5, poll_seconds=0.05)
    assert not done, "every message is still held"
    assert len(polls) >= 5
    assert len(counts) == len(polls) + 1, "one count before the first poll, one after each"
    assert set(counts) == {120}


def test_unresolved_messages_are_reconciled_never_resent(ledger, ledger_url, start_esp, contact_file, tmp_path):
    esp = start_esp(hold_rate=1, hold_min_seconds=1.5, hold_max_seconds=2)
    _, claimed = parse_and_claim(ledger, "timed-out", contact_file, tmp_path)
    with HttpEmailProvider(esp.url, esp.api_key) as client:
        for batch_no in claimed["batches"]:
            pipeline.send_batch(ledger, client, "timed-out", batch_no, 50)
        resolved, left = pipeline.collect_outcomes(ledger, [HttpLookupSource(client)], "timed-out")
        assert (resolved, left) == (0, 120), "every message is still held"
        ledger.finish_run("timed-out")  # the run gave up (its sensor timed out)

        _, later = parse_and_claim(ledger, "later", contact_file, tmp_path)
        assert later["taken_over"] == 120 and later["to_send"] == 0
        sent_before = len(esp.messages())
        finish(ledger, client, "later")
    messages = esp.messages()
    first_messages = messages[:sent_before]
    assert len(first_messages) == 120 and all(m["status"] != "sent" for m in messages)
    assert_run_invariants(messages, expected_contacts(contact_file), max_attempts=5)
    assert_ledger_matches(ledger_url, messages)


@pytest.mark.parametrize(
    ("outcomes", "done"),
    [
        ({"hold_rate": 1, "hold_min_seconds": 30, "hold_max_seconds": 30}, False),  # every message held
        ({"delivered_rate": 1, "bounced_rate": 0, "blocked_rate": 0, "hold_rate": 0}, True),  # none left
        ({"delivered_rate": 0, "bounced_rate": 0, "blocked_rate": 1, "hold_rate": 0}, True),  # resends due
    ],
)
def test_the_delivery_poke_waits_until_no_message_lacks_an_outcome_or_a_resend_is_due(
    ledger, start_esp, contact_file, tmp_path, outcomes, done
):
    esp = start_esp(**outcomes)
    _, claimed = parse_and_claim(ledger, "run", contact_file, tmp_path)
    with HttpEmailProvider(esp.url, esp.api_key) as client:
        for batch_no in claimed["batches"]:
            pipeline.send_batch(ledger, client, "run", batch_no, 50)
        assert pipeline.await_delivery(ledger, [HttpLookupSource(client)], "run", max_attempts=5) is done
    assert ledger.count_awaiting_outcome("run") == (0 if done else 120)


HELD = {"delivered_rate": 1, "bounced_rate": 0, "blocked_rate": 0, "hold_rate": 1}


@pytest.mark.parametrize(
    ("holds", "poke", "done", "seconds", "left"),
    [
        # every outcome held 30 s: after a linger without one, the poke ends, not done
        ((30, 30), {"linger_seconds": 0.5}, False, (0.5, 5), 120),
        # outcomes spread over 0.2-2 s: one poke records them all, however long beyond the linger
        ((0.2, 2), {"linger_seconds": 0.5}, True, (0.2, 10), 0),
        # max_seconds bounds a poke even while outcomes still arrive
        ((0.1, 20), {"linger_seconds": 5, "max_seconds": 1}, False, (0.5, 3), "some"),
    ],
    ids=["none-arrive", "all-arrive", "bounded"],
)
def test_a_delivery_poke_goes_on_while_outcomes_arrive_and_gives_its_slot_back_when_none_does(
    ledger, start_esp, contact_file, tmp_path, holds, poke, done, seconds, left
):
    slept: list[float] = []

    def sleep(interval: float) -> None:
        slept.append(interval)
        time.sleep(interval)

    esp = start_esp(**HELD, hold_min_seconds=holds[0], hold_max_seconds=holds[1])
    _, claimed = parse_and_claim(ledger, "run", contact_file, tmp_path)
    with HttpEmailProvider(esp.url, esp.api_key) as client:
        for batch_no in claimed["batches"]:
            pipeline.send_batch(ledger, client, "run", batch_no, 50)
        started = time.monotonic()
        sources = [HttpLookupSource(client)]
        assert pipeline.await_delivery(ledger, sources, "run", 5, poll_seconds=0.1, sleep=sleep, **poke) is done
        assert seconds[0] <= time.monotonic() - started < seconds[1]
    assert len(slept) >= 2, "it polled again within the poke"
    awaiting = ledger.count_awaiting_outcome("run")
    assert 0 < awaiting < 120 if left == "some" else awaiting == left


def test_a_long_delivery_poke_logs_its_progress(ledger, start_esp, contact_file, tmp_path, monkeypatch, caplog):
    """The task log shows how far a poke is while it goes on (every PROGRESS_LOG_SECONDS), not only at its
    end: a million-row run's first poke lasts minutes."""
    monkeypatch.setattr(pipeline, "PROGRESS_LOG_SECONDS", 0)
    esp = start_esp(**HELD, hold_min_seconds=1, hold_max_seconds=3)
    _, claimed = parse_and_claim(ledger, "run", contact_file, tmp_path)
    with HttpEmailProvider(esp.url, esp.api_key) as client:
        for batch_no in claimed["batches"]:
            pipeline.send_batch(ledger, client, "run", batch_no, 50)
        with caplog.at_level("INFO", logger=pipeline.log.name):
            assert pipeline.await_delivery(ledger, [HttpLookupSource(client)], "run", 5, linger_seconds=1,
                                           poll_seconds=0.1)  # fmt: skip
    lines = [r.getMessage() for r in caplog.records if "messages still without one" in r.getMessage()]
    assert len(lines) >= 3, "one line a poll here, not one a poke"
    left = [int(line.split("; ")[1].split()[0]) for line in lines]
    assert left == sorted(left, reverse=True) and left[0] > 0 and left[-1] == 0


def test_a_resend_poke_works_while_resends_are_due_and_gives_its_slot_back_otherwise(
    ledger, ledger_url, start_esp, contact_file, tmp_path
):
    esp = start_esp(delivered_rate=0.5, bounced_rate=0, blocked_rate=0.5, hold_rate=0, seed=3)
    _, claimed = parse_and_claim(ledger, "run", contact_file, tmp_path)
    slept: list[float] = []
    with HttpEmailProvider(esp.url, esp.api_key) as client:
        for batch_no in claimed["batches"]:
            pipeline.send_batch(ledger, client, "run", batch_no, 50)
        first_wave = len(esp.messages())

        # A production backoff: the poke records the outcomes, resends nothing yet and returns at once.
        production = dict(backoff_seconds=600, linger_seconds=2, sleep=slept.append)
        assert resend_poke(ledger, client, "run", **production) is False
        assert len(esp.messages()) == first_wave and slept == [], "no email before the backoff, no slot held"
        blocked = ledger.count_resendable("run", 5)
        assert blocked > 0

        # A backoff shorter than a poke: the same poke resends (each contact a new email) until done.
        assert resend_poke(ledger, client, "run", backoff_seconds=0.2, linger_seconds=2) is True
    assert len(esp.messages()) >= first_wave + blocked, "every blocked contact got a new email"
    ledger.close_out("run", 5)
    messages = esp.messages()
    assert_run_invariants(messages, expected_contacts(contact_file), max_attempts=5)
    assert_ledger_matches(ledger_url, messages)


class OneShotTransport:
    """A transport without idempotency (as SMTP after DATA): it delivers, then its connection drops before
    the reply on the chosen request. Its own log says who got a message."""

    idempotent = False
    max_batch = 1000

    def __init__(self, drop_reply_on_request: int) -> None:
        self.delivered: list[str] = []
        self.requests = 0
        self.drop_reply_on_request = drop_reply_on_request

    def send_batch(self, messages):
        from welcome_mailer.transports import SendResult

        self.requests += 1
        self.delivered.extend(m.to for m in messages)
        if self.requests == self.drop_reply_on_request:
            self.lost_replies = len(messages)  # requests run concurrently: whichever arrives second
            raise ConnectionError("connection dropped after the data was sent")
        return [SendResult(m.to, f"id-{m.idempotency_key}") for m in messages]

    def close(self) -> None:
        pass


def test_an_unconfirmed_attempt_is_never_resent_through_a_transport_without_idempotency(ledger, contact_file, tmp_path):
    _, claimed = parse_and_claim(ledger, "run", contact_file, tmp_path, batch_size=120)
    transport = OneShotTransport(drop_reply_on_request=2)
    with pytest.raises(ConnectionError):
        pipeline.send_batch(ledger, transport, "run", claimed["batches"][0], 50)  # 3 requests; the 2nd drops
    handed_over = len(transport.delivered)  # 100, or 120 when the third request was already under way
    retried = pipeline.send_batch(ledger, transport, "run", claimed["batches"][0], 50)  # Airflow's retry
    assert len(transport.delivered) == len(set(transport.delivered)), "nobody got two emails"
    assert len(transport.delivered) == 120, "nobody was forgotten"
    assert retried["sent"] == 120 - handed_over, "the retry sent exactly what was never handed over"
    summary = ledger.run_summary("run")["by_status"]
    unconfirmed = summary["unconfirmed"]
    assert unconfirmed == transport.lost_replies, "exactly the lost replies are unconfirmed, not resent"
    assert summary["sent"] + unconfirmed == 120


class SlowTransport:
    """A transport whose requests take a while: it counts how many are under way at once, checks in the
    ledger that every attempt of a request was marked dispatched before the request came (it has no
    idempotency), and can drop the reply of the first request to arrive, after the data went out."""

    idempotent = False
    max_batch = 1000

    def __init__(self, ledger_url: str, *, drop_first_reply: bool = False) -> None:
        from sqlalchemy import create_engine

        self.engine = create_engine(ledger_url)
        self.drop_first_reply = drop_first_reply
        self.delivered: list[str] = []
        self.dispatched_before: list[bool] = []
        self.under_way = self.most_under_way = self.requests = 0
        self.lock = threading.Lock()

    def send_batch(self, messages):
        from welcome_mailer.transports import SendResult

        keys = [m.idempotency_key for m in messages]
        with self.engine.connect() as conn:
            states = conn.execute(select(send_attempts.c.status).where(send_attempts.c.idempotency_key.in_(keys)))
            self.dispatched_before.append(sorted(states.scalars()) == ["dispatched"] * len(keys))
        with self.lock:
            self.requests += 1
            first = self.requests == 1
            self.under_way += 1
            self.most_under_way = max(self.most_under_way, self.under_way)
        time.sleep(0.3 if first else 0.05)  # the first request fails last: the others are back by then
        with self.lock:
            self.under_way -= 1
            self.delivered.extend(m.to for m in messages)
        if first and self.drop_first_reply:
            raise ConnectionError("connection dropped after the data was sent")
        return [SendResult(m.to, f"id-{m.idempotency_key}") for m in messages]

    def close(self) -> None:
        self.engine.dispose()


def test_a_send_task_keeps_several_requests_under_way_each_dispatched_before_it_goes(
    ledger, ledger_url, contact_file, tmp_path
):
    _, claimed = parse_and_claim(ledger, "run", contact_file, tmp_path, batch_size=120)
    transport = SlowTransport(ledger_url)
    result = pipeline.send_batch(ledger, transport, "run", claimed["batches"][0], 10, requests_in_flight=4)
    assert transport.requests == 12 and transport.most_under_way == 4, "4 requests at once, never more"
    assert all(transport.dispatched_before), "each request's attempts were marked dispatched before it went"
    assert sorted(transport.delivered) == sorted(expected_contacts(contact_file))
    assert result["sent"] == 120 and ledger.run_summary("run")["by_status"] == {"sent": 120}


def test_after_a_lost_reply_the_requests_already_under_way_are_recorded_not_left_unconfirmed(
    ledger, ledger_url, contact_file, tmp_path
):
    _, claimed = parse_and_claim(ledger, "run", contact_file, tmp_path, batch_size=120)
    transport = SlowTransport(ledger_url, drop_first_reply=True)
    with pytest.raises(ConnectionError):
        pipeline.send_batch(ledger, transport, "run", claimed["batches"][0], 10, requests_in_flight=4)
    handed_over = len(transport.delivered)
    assert 40 <= handed_over < 120, "the requests under way went out; nothing new after the failure"
    assert ledger.run_summary("run")["by_status"]["sent"] == handed_over - 10, "recorded, but the lost reply's"
    retried = pipeline.send_batch(ledger, transport, "run", claimed["batches"][0], 10, requests_in_flight=4)
    assert len(transport.delivered) == len(set(transport.delivered)) == 120, "nobody twice, nobody forgotten"
    assert retried["sent"] == 120 - handed_over
    assert ledger.run_summary("run")["by_status"] == {"sent": 110, "unconfirmed": 10}


def test_the_lease_is_renewed_at_the_first_call_then_once_an_interval_has_passed(ledger, monkeypatch):
    """Polls every 0.25 s do not each commit a renewal: once LEASE_RENEWAL_SECONDS (at most a quarter of
    the lease) have passed."""
    renewals: list[str] = []
    monkeypatch.setattr(ledger, "renew_lease", renewals.append)
    keep = pipeline.lease_keeper(ledger, "run")
    for _ in range(5):
        keep()
    assert renewals == ["run"], "the first call renews, the next ones within the interval do not"
    ledger.lease = timedelta(seconds=0.4)  # a quarter: 0.1 s, shorter than LEASE_RENEWAL_SECONDS
    keep = pipeline.lease_keeper(ledger, "run")
    keep()
    time.sleep(0.15)
    keep()
    keep()
    assert renewals == ["run"] * 3, "renewed again once a quarter of the lease had passed"


def test_a_long_send_task_keeps_renewing_its_runs_lease(ledger, ledger_url, contact_file, tmp_path, monkeypatch):
    """A send task longer than the lease would lose its contacts to another run mid-way: it renews the
    run's lease as it records its requests (every LEASE_RENEWAL_SECONDS; here at every request)."""
    _, claimed = parse_and_claim(ledger, "run", contact_file, tmp_path, batch_size=120)
    with ledger.engine.begin() as conn:  # the lease the claim took is nearly over
        conn.execute(update(ledger_runs).values(lease_expires_at=utcnow() + timedelta(seconds=1)))
    monkeypatch.setattr(pipeline, "LEASE_RENEWAL_SECONDS", 0)
    result = pipeline.send_batch(ledger, SlowTransport(ledger_url), "run", claimed["batches"][0], 10)
    assert result["sent"] == 120
    with ledger.engine.connect() as conn:
        expires = conn.execute(select(ledger_runs.c.lease_expires_at).where(ledger_runs.c.run_id == "run")).scalar()
    assert expires > utcnow() + ledger.lease - timedelta(minutes=1), "renewed for a whole lease"
