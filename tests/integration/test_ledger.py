"""The ledger's state machine, on SQLite and on Postgres (``ledger`` runs each test on both)."""

from __future__ import annotations

import contextlib
import multiprocessing
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import event, func, select, update
from sqlalchemy.exc import OperationalError

from include.bench.postgres import row_updates
from tests.support.ledger import contacts, send_everything, stage_and_claim, statuses
from welcome_mailer.ledger import (
    AcceptedAttempt,
    ContactsTakenOver,
    Ledger,
    bulk,
    connect,
    ledger_runs,
    send_attempts,
    sent_contacts,
)
from welcome_mailer.ledger.migrate import HEAD_REVISION, upgrade
from welcome_mailer.vocabulary import OutcomeEvent, idempotency_key, utcnow


def engine_that_waits_for_locks_at_most(url: str, seconds: int):
    """A migrated Postgres ledger whose lock waits fail after ``seconds`` (a cycle or a wait a test rules
    out fails at once instead of hanging)."""
    engine = connect(url)
    upgrade(engine)

    @event.listens_for(engine, "connect")
    def set_lock_timeout(dbapi_connection, _record) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute(f"SET lock_timeout = '{seconds}s'")
        dbapi_connection.commit()

    engine.dispose()
    return engine


def test_migrating_again_changes_nothing(ledger):
    assert upgrade(ledger.engine) == (HEAD_REVISION, HEAD_REVISION)


def test_claim_takes_new_contacts_in_bounded_batches(ledger):
    claimed = stage_and_claim(ledger, "run-1", [f"u{i}@example.com" for i in range(25)], batch_size=10)
    assert (claimed.staged, claimed.claimed_new, claimed.owned, claimed.to_send) == (25, 25, 25, 25)
    assert claimed.batches == [0, 1, 2] and claimed.batch_size == 10
    capped = stage_and_claim(ledger, "run-2", [f"v{i}@example.com" for i in range(25)], batch_size=1, max_batches=4)
    assert capped.batch_size == 7 and capped.batches == [0, 1, 2, 3], "never more batches than max_batches"
    sizes = [len(ledger.start_attempts("run-2", b)) for b in capped.batches]
    assert sizes == [7, 7, 7, 4]


def test_a_first_claim_writes_each_new_contact_once_and_a_mixed_one_renumbers(ledger):
    """Issue 14: numbering the claimed contacts afterwards wrote a second version of every row (a third of
    a 400k claim on Postgres), starting their first attempt a third, and recording the provider's
    acceptance a fourth. New contacts get their batch and their first attempt as they are inserted, an
    accepted send is the attempt's; the numbering then only rewrites what differs, as when contacts
    already contacted leave gaps."""
    renumbered = []
    contact_rows_updated = []

    def count_updates(conn, cursor, statement, parameters, context, executemany):
        if statement.startswith("UPDATE sent_contacts SET batch_no"):
            renumbered.append(cursor.rowcount)
        if statement.startswith("UPDATE sent_contacts"):
            contact_rows_updated.append(cursor.rowcount)

    event.listen(ledger.engine, "after_cursor_execute", count_updates)
    first = stage_and_claim(ledger, "run-1", [f"u{i:02}@example.com" for i in range(25)], batch_size=1, max_batches=4)
    started = [ledger.start_attempts("run-1", b) for b in first.batches]
    assert [len(batch) for batch in started] == [7, 7, 7, 4]
    assert sum(renumbered) == 0, "every new contact inserted with its batch"
    assert sum(contact_rows_updated) == 0, "and with its first attempt: claimed and started, no row rewritten"
    for batch in started:
        ledger.record_sent("run-1", [AcceptedAttempt(a.email, a.attempt, f"m-{a.email}") for a in batch])
    assert sum(contact_rows_updated) == 0, "an accepted attempt is written on the attempt only"
    assert len(list(ledger.pending_messages("run-1"))) == 25 and ledger.count_awaiting_outcome("run-1") == 25
    assert {status for status, _, _ in statuses(ledger).values()} == {"sent"}, "shown as sent"
    assert [ledger.start_attempts("run-1", b) for b in first.batches] == [[]] * 4, "accepted: nothing to resend"
    # Half of the next file was contacted by run-1: the batch numbers taken from the file are renumbered.
    renumbered.clear()
    mixed = [f"u{i:02}@example.com" for i in range(0, 50, 2)]
    second = stage_and_claim(ledger, "run-2", mixed, batch_size=1, max_batches=4)
    assert second.to_send == 12 and renumbered and renumbered[0] > 0
    sent = [ledger.start_attempts("run-2", b) for b in second.batches]
    assert [len(batch) for batch in sent] == [3, 3, 3, 3]
    assert sorted(a.email for batch in sent for a in batch) == mixed[13:]
    event.remove(ledger.engine, "after_cursor_execute", count_updates)


def test_a_new_contact_is_claimed_with_its_first_attempt_recorded(ledger):
    """claim records a new contact's first attempt in the database (Postgres' sha256, SQLite's registered
    function): the key must be the one the sender sends with, and that start_attempts returns."""
    emails = ["a@example.com", "Zoë.b@exämple.com", "c+tag@example.com"]
    claimed = stage_and_claim(ledger, "run-1", emails)
    with ledger.engine.connect() as conn:
        recorded = conn.execute(
            select(
                send_attempts.c.email, send_attempts.c.attempt, send_attempts.c.idempotency_key, send_attempts.c.status
            )
        ).all()
    assert sorted(recorded) == sorted((e, 1, idempotency_key(e, 1), "pending") for e in emails)
    assert {e: s[0] for e, s in statuses(ledger).items()} == dict.fromkeys(emails, "sending")
    started = [a for b in claimed.batches for a in ledger.start_attempts("run-1", b)]
    assert sorted((a.email, a.attempt, a.idempotency_key) for a in started) == sorted(r[:3] for r in recorded)
    with ledger.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(send_attempts)).scalar() == 3, "no second attempt"


def test_a_contact_suppressed_before_its_batch_is_not_sent_nor_counted_as_sent(ledger):
    """Its first attempt was recorded by the claim; suppressed before the send task ran, it is not sent,
    and the run's summary does not count its pending attempt as a message."""
    claimed = stage_and_claim(ledger, "run-1", ["a@example.com", "b@example.com"])
    audit = {"actor": "test", "action": "suppress", "reason": "asked by phone"}
    assert ledger.suppress(["b@example.com"], audit) == 1
    send_everything(ledger, "run-1", claimed.batches, "delivered")
    assert {e: s[0] for e, s in statuses(ledger).items()} == {
        "a@example.com": "delivered",
        "b@example.com": "suppressed",
    }
    summary = ledger.run_summary("run-1")
    assert (summary["messages_sent"], summary["resent_after_block"]) == (1, 0)


def test_claim_makes_no_more_send_tasks_than_one_per_min_batch_contacts(ledger):
    few = stage_and_claim(ledger, "run-1", [f"u{i}@example.com" for i in range(25)], 1, 8, min_batch_contacts=10)
    assert few.batches == [0, 1] and few.batch_size == 13, "25 contacts, at least 10 a task: two tasks"
    assert [len(ledger.start_attempts("run-1", b)) for b in few.batches] == [13, 12]
    one = stage_and_claim(ledger, "run-2", [f"v{i}@example.com" for i in range(9)], 1, 8, min_batch_contacts=10)
    assert one.batches == [0] and one.to_send == 9, "fewer contacts than the minimum: one task, not none"
    many = stage_and_claim(ledger, "run-3", [f"w{i}@example.com" for i in range(100)], 1, 4, min_batch_contacts=10)
    assert many.batches == [0, 1, 2, 3], "a large file still gets max_batches"


def test_a_live_run_keeps_its_contacts(ledger):
    stage_and_claim(ledger, "run-1", ["a@example.com", "b@example.com"])
    second = stage_and_claim(ledger, "run-2", ["b@example.com", "c@example.com"])
    assert (second.owned, second.skipped, second.claimed_new) == (1, 1, 1)
    assert statuses(ledger)["b@example.com"][1] == "run-1"


def test_claim_is_safe_to_repeat(ledger):
    first = stage_and_claim(ledger, "run-1", ["a@example.com", "b@example.com"])
    again = ledger.claim("run-1", 500, 1024)
    assert (again.owned, again.claimed_new, again.to_send, again.batches) == (2, 0, 2, first.batches)


def test_attempt_is_recorded_before_sending_and_reused_by_a_retry(ledger):
    claimed = stage_and_claim(ledger, "run-1", ["a@example.com"])
    first_try = ledger.start_attempts("run-1", claimed.batches[0])
    retry = ledger.start_attempts("run-1", claimed.batches[0])  # the task died before recording the send
    assert first_try == retry and first_try[0].attempt == 1
    assert first_try[0].idempotency_key == idempotency_key("a@example.com", 1)
    with ledger.engine.connect() as conn:
        rows = conn.execute(
            select(send_attempts.c.attempt, send_attempts.c.status, send_attempts.c.idempotency_key)
        ).all()
    assert rows == [(1, "pending", idempotency_key("a@example.com", 1))]


def test_delivered_and_bounced_are_final_forever(ledger):
    claimed = stage_and_claim(ledger, "run-1", ["d@example.com", "b@example.com"])
    send_everything(ledger, "run-1", claimed.batches, {"d@example.com": "delivered", "b@example.com": "bounced"})
    ledger.finish_run("run-1")
    later = stage_and_claim(ledger, "run-2", ["d@example.com", "b@example.com"])
    assert (later.owned, later.skipped, later.batches) == (0, 2, [])
    assert {e: s for e, (s, _, _) in statuses(ledger).items()} == {
        "d@example.com": "delivered",
        "b@example.com": "bounced",
    }


def test_blocked_is_resent_with_a_new_attempt_until_max_attempts_then_failed(ledger):
    claimed = stage_and_claim(ledger, "run-1", ["x@example.com"])
    send_everything(ledger, "run-1", claimed.batches, "blocked")
    for attempt in (2, 3):
        batches = ledger.requeue_blocked("run-1", 3, utcnow(), 500, 1024)
        assert [a.attempt for a in ledger.start_attempts("run-1", batches[0])] == [attempt]
        ledger.record_sent("run-1", [AcceptedAttempt("x@example.com", attempt, f"id-{attempt}")])
        ledger.record_outcomes([OutcomeEvent("blocked", provider_message_id=f"id-{attempt}")])
    assert ledger.count_resendable("run-1", 3) == 0
    assert ledger.requeue_blocked("run-1", 3, utcnow(), 500, 1024) == []
    assert ledger.close_out("run-1", 3) == 1
    assert statuses(ledger)["x@example.com"] == ("failed", "run-1", 3)
    with ledger.engine.connect() as conn:
        keys = conn.execute(select(send_attempts.c.idempotency_key).order_by(send_attempts.c.attempt)).scalars().all()
    assert len(set(keys)) == 3, "every attempt has its own idempotency key"


def test_a_resend_round_is_numbered_after_every_batch_still_waiting_for_outcomes(ledger):
    """A batch is read through (run_id, status, batch_no): a resend round numbered 0 again shared its
    number with the first round's contacts still waiting for their outcome (and with earlier rounds'), and
    start_attempts read every one of them to skip it, each round (0.2 s a round at 1M). Each round's
    batches take numbers no sending contact holds, and hold only that round's contacts."""
    claimed = stage_and_claim(ledger, "run-1", [f"u{i}@example.com" for i in range(6)], batch_size=2)
    assert claimed.batches == [0, 1, 2]
    for batch in claimed.batches:
        attempts = ledger.start_attempts("run-1", batch)
        ledger.record_sent("run-1", [AcceptedAttempt(a.email, a.attempt, f"id-{a.email}-1") for a in attempts])
    ledger.record_outcomes([OutcomeEvent("blocked", provider_message_id="id-u0@example.com-1")])
    assert ledger.requeue_blocked("run-1", 3, utcnow(), 2, 8) == [3], "after 0-2, whose contacts still wait"
    assert [(a.email, a.attempt) for a in ledger.start_attempts("run-1", 3)] == [("u0@example.com", 2)]
    ledger.record_sent("run-1", [AcceptedAttempt("u0@example.com", 2, "id-u0@example.com-2")])
    ledger.record_outcomes([OutcomeEvent("blocked", provider_message_id=f"id-u{i}@example.com-1") for i in (1, 5)])
    assert ledger.requeue_blocked("run-1", 3, utcnow(), 2, 8) == [4], "u0's round (3) still waits"
    with ledger.engine.connect() as conn:
        numbered = dict(
            conn.execute(
                select(sent_contacts.c.email, sent_contacts.c.batch_no).where(sent_contacts.c.status == "sending")
            ).all()
        )
    # u1 and u5 are claimed again (batch 4); the rest keep the numbers they were sent under
    assert numbered == {"u0@example.com": 3, "u2@example.com": 1, "u3@example.com": 1, "u4@example.com": 2}
    assert sorted(a.email for a in ledger.start_attempts("run-1", 4)) == ["u1@example.com", "u5@example.com"]
    ledger.record_outcomes([OutcomeEvent("delivered", provider_message_id=f"id-u{i}@example.com-1") for i in (2, 3, 4)])
    ledger.record_outcomes([OutcomeEvent("delivered", provider_message_id="id-u0@example.com-2")])
    assert ledger.count_in_flight("run-1") == 2, "u1 and u5, sent in batch 4"


def test_a_poke_that_requeues_nothing_leaves_the_due_contacts_numbers_as_they_are(ledger):
    """While the provider's quota is used up, every resend poke asks requeue_blocked again: contacts still
    due (here: a batch never sent, as the quota leaves it) keep the numbers they got, and no row is
    written. Numbered afresh at each poke, every held contact was rewritten every poke of the pause."""
    claimed = stage_and_claim(ledger, "run-1", [f"u{i}@example.com" for i in range(4)], batch_size=2)
    [attempt, _] = ledger.start_attempts("run-1", 0)
    ledger.record_sent("run-1", [AcceptedAttempt(attempt.email, 1, "id-1")])  # batch 1 never sent
    ledger.record_outcomes([OutcomeEvent("blocked", provider_message_id="id-1")])
    assert claimed.batches == [0, 1]
    first = ledger.requeue_blocked("run-1", 3, utcnow(), 2, 8)
    assert first == [2, 3], "the blocked one and the three never sent, after the highest number held (1)"
    writes = []

    def count_writes(conn, cursor, statement, parameters, context, executemany):
        writes.extend([statement] if statement.lstrip().upper().startswith("UPDATE") else [])

    event.listen(ledger.engine, "before_cursor_execute", count_writes)
    try:
        assert ledger.requeue_blocked("run-1", 3, utcnow(), 2, 8) == first
    finally:
        event.remove(ledger.engine, "before_cursor_execute", count_writes)
    assert len(writes) == 1 and "SET status" in writes[0], f"only the requeue (none due), no renumbering: {writes}"
    sent = [(a.email, a.attempt) for batch in first for a in ledger.start_attempts("run-1", batch)]
    assert sorted(sent) == [("u0@example.com", 2), ("u1@example.com", 1), ("u2@example.com", 1), ("u3@example.com", 1)]


def test_backoff_holds_a_blocked_contact_back(ledger):
    claimed = stage_and_claim(ledger, "run-1", ["x@example.com"])
    send_everything(ledger, "run-1", claimed.batches, "blocked")
    assert ledger.requeue_blocked("run-1", 3, utcnow() - timedelta(minutes=5), 500, 1024) == []
    assert ledger.requeue_blocked("run-1", 3, utcnow(), 500, 1024) == [0]


def test_failed_contact_listed_again_gets_a_fresh_budget_once_its_cool_off_passed(ledger):
    claimed = stage_and_claim(ledger, "run-1", ["x@example.com", "d@example.com"])
    send_everything(ledger, "run-1", claimed.batches, {"x@example.com": "blocked", "d@example.com": "delivered"})
    ledger.close_out("run-1", 1)
    ledger.finish_run("run-1")

    too_soon = stage_and_claim(
        ledger, "run-2", ["x@example.com", "d@example.com"], retry_failed_after=timedelta(hours=1)
    )
    assert (too_soon.owned, too_soon.taken_over, too_soon.failed_recently, too_soon.batches) == (0, 0, 1, [])
    assert statuses(ledger)["x@example.com"] == ("failed", "run-1", 1), "left alone while cooling off"
    ledger.finish_run("run-2")

    with ledger.engine.begin() as conn:  # an hour later
        conn.execute(update(sent_contacts).values(updated_at=sent_contacts.c.updated_at - timedelta(hours=1)))
    again = stage_and_claim(ledger, "run-3", ["x@example.com", "d@example.com"], retry_failed_after=timedelta(hours=1))
    assert (again.owned, again.taken_over, again.failed_recently, again.skipped) == (1, 1, 0, 1)
    [attempt] = ledger.start_attempts("run-3", again.batches[0])
    assert (attempt.email, attempt.attempt) == ("x@example.com", 2), "attempts keep counting: the key is new"


def test_contacts_of_a_dead_run_are_taken_over_as_they_are(ledger):
    claimed = stage_and_claim(ledger, "dead", ["sending@example.com", "sent@example.com"], batch_size=1)
    ledger.start_attempts("dead", 0)  # 'sending': recorded, never confirmed
    [sent] = ledger.start_attempts("dead", 1)
    ledger.record_sent("dead", [AcceptedAttempt(sent.email, sent.attempt, "id-sent")])
    with ledger.engine.begin() as conn:  # the run stopped renewing its lease
        conn.execute(update(ledger_runs).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    assert claimed.batches == [0, 1]
    taker = stage_and_claim(ledger, "taker", ["sending@example.com", "sent@example.com"])
    assert (taker.owned, taker.taken_over, taker.to_send) == (2, 2, 1)
    resent = ledger.start_attempts("taker", taker.batches[0])
    assert [(a.email, a.attempt) for a in resent] == [("sending@example.com", 1)], "same attempt, same key"
    assert [m.message_id for m in list(ledger.pending_messages("taker"))] == ["id-sent"], "polled, never resent blindly"
    ledger.record_sent("taker", [AcceptedAttempt(a.email, a.attempt, f"id-{a.email}") for a in resent])
    with ledger.engine.connect() as conn:
        senders = dict(conn.execute(select(send_attempts.c.email, send_attempts.c.run_id)).all())
    assert senders == {"sending@example.com": "taker", "sent@example.com": "dead"}, "who sent each message"
    assert ledger.run_summary("taker")["messages_sent"] == 1, "the message the taker sent is in its summary"


def test_writes_of_a_run_that_lost_its_contacts_change_nothing(ledger):
    claimed = stage_and_claim(ledger, "old", ["a@example.com"])
    [attempt] = ledger.start_attempts("old", claimed.batches[0])
    with ledger.engine.begin() as conn:
        conn.execute(update(ledger_runs).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    stage_and_claim(ledger, "new", ["a@example.com"])
    ledger.record_sent("old", [AcceptedAttempt(attempt.email, attempt.attempt, "id-late")])
    assert statuses(ledger)["a@example.com"] == ("sending", "new", 1)
    with ledger.engine.connect() as conn:
        attempt_row = conn.execute(select(send_attempts.c.status, send_attempts.c.run_id)).one()
    assert tuple(attempt_row) == ("pending", "new"), "nor its attempt: the new run sends and records it"
    assert ledger.start_attempts("old", claimed.batches[0]) == []


@pytest.mark.parametrize("late_reply", ["accepted", "refused"])
def test_a_dead_runs_late_reply_cannot_settle_an_attempt_ahead_of_its_contact(ledger, late_reply):
    """The run that lost the contact records its provider's reply late: nothing changes, its outcome waits
    in the inbox, and the taker (same attempt, same key) records the send and gets the outcome. Before,
    the late reply settled the attempt alone, and a later outcome, found "already applied" to the
    attempt, left the contact sent for ever."""
    claimed = stage_and_claim(ledger, "dead", ["x@example.com"])
    [attempt] = ledger.start_attempts("dead", claimed.batches[0])
    with ledger.engine.begin() as conn:  # the run stopped renewing its lease
        conn.execute(update(ledger_runs).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    taker = stage_and_claim(ledger, "taker", ["x@example.com"])
    message_id = "m1" if late_reply == "accepted" else None
    ledger.record_sent("dead", [AcceptedAttempt(attempt.email, attempt.attempt, message_id, "550 5.1.1 no")])
    counts = ledger.record_outcomes([OutcomeEvent("blocked", "m1", attempt.idempotency_key, source="push")])
    assert counts.inboxed == 1, "the attempt's send is not recorded: the event waits for it"
    assert statuses(ledger)["x@example.com"] == ("sending", "taker", 1)
    [again] = ledger.start_attempts("taker", taker.batches[0])
    assert again.idempotency_key == attempt.idempotency_key, "the same attempt: no second email"
    ledger.record_sent("taker", [AcceptedAttempt(again.email, again.attempt, "m1")])
    assert statuses(ledger)["x@example.com"][0] == "blocked", "the waiting outcome applied with the send"
    assert ledger.requeue_blocked("taker", 3, utcnow() + timedelta(minutes=1), 500, 8) == [0]
    assert ledger.run_summary("taker")["messages_sent"] == 1


def test_an_outcome_waiting_for_a_taken_over_send_stays_through_the_dead_runs_late_reply(ledger):
    """An outcome that came before the send was recorded waits in the inbox. The dead run's late reply
    cannot record the attempt (the taker holds it now), so the event must stay for the taker's
    record_sent, not be removed with the dead run's: else the bounce is lost and the contact waits."""
    claimed = stage_and_claim(ledger, "dead", ["x@example.com"])
    [attempt] = ledger.start_attempts("dead", claimed.batches[0])
    with ledger.engine.begin() as conn:  # the run stopped renewing its lease
        conn.execute(update(ledger_runs).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    taker = stage_and_claim(ledger, "taker", ["x@example.com"])
    pushed = OutcomeEvent("bounced", idempotency_key=attempt.idempotency_key, source="push")
    assert ledger.record_outcomes([pushed]).inboxed == 1
    ledger.record_sent("dead", [AcceptedAttempt(attempt.email, attempt.attempt, "m1")])
    assert ledger.inbox_size() == 1, "the attempt is the taker's: its outcome still waits for it"
    [again] = ledger.start_attempts("taker", taker.batches[0])
    ledger.record_sent("taker", [AcceptedAttempt(again.email, again.attempt, "m1")])
    assert statuses(ledger)["x@example.com"][0] == "bounced" and ledger.inbox_size() == 0


@pytest.mark.postgres
@pytest.mark.timeout(60)
def test_record_outcomes_locks_a_contact_before_its_attempt_as_every_writer_does(postgres_url):
    """A writer holding a contact (record_sent, a take-over) goes on to its attempt: record_outcomes,
    waiting for that contact, must not hold the attempt meanwhile, or the two wait on each other."""
    engine = engine_that_waits_for_locks_at_most(postgres_url, 5)
    ledger = Ledger(engine)
    claimed = stage_and_claim(ledger, "run-1", ["a@example.com"])
    [attempt] = ledger.start_attempts("run-1", claimed.batches[0])
    writer = engine.connect()
    outcomes = ThreadPoolExecutor(1)
    try:
        writer.exec_driver_sql("SELECT 1 FROM sent_contacts WHERE email = 'a@example.com' FOR UPDATE")
        pushed = outcomes.submit(
            ledger.record_outcomes, [OutcomeEvent("delivered", idempotency_key=attempt.idempotency_key)]
        )
        time.sleep(1)
        assert not pushed.done(), "record_outcomes waits for the contact"
        writer.exec_driver_sql("UPDATE send_attempts SET updated_at = now() WHERE email = 'a@example.com'")
        writer.commit()  # the writer got its attempt: no cycle
        assert pushed.result(timeout=20).inboxed == 1
    finally:
        writer.close()
        outcomes.shutdown()
        engine.dispose()


@pytest.mark.postgres
@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", ["accepted", "refused", "outcome waiting"])
def test_record_sent_locks_only_the_contacts_it_may_write(postgres_url, case):
    """record_sent takes a contact before its attempt only where it may write the contact: a refused send
    (the contact bounced) or one whose outcome waits in the inbox. An accepted send locks no contact (a
    lock writes every row's header: a fifth of the SQL time of a 1M run): it records the attempt while
    another transaction holds the contact."""
    engine = engine_that_waits_for_locks_at_most(postgres_url, 2)
    ledger = Ledger(engine)
    claimed = stage_and_claim(ledger, "run-1", ["a@example.com"])
    [attempt] = ledger.start_attempts("run-1", claimed.batches[0])
    if case == "outcome waiting":
        assert ledger.record_outcomes([OutcomeEvent("delivered", provider_message_id="m1")]).inboxed == 1
    holder = engine.connect()
    try:
        holder.exec_driver_sql("SELECT 1 FROM sent_contacts WHERE email = 'a@example.com' FOR UPDATE")
        sent = AcceptedAttempt(attempt.email, attempt.attempt, None if case == "refused" else "m1", "550 5.1.1")
        if case == "accepted":
            ledger.record_sent("run-1", [sent])
        else:
            with pytest.raises(OperationalError, match="lock timeout"):
                ledger.record_sent("run-1", [sent])  # it waits for the contact, before its attempt
            holder.rollback()
            ledger.record_sent("run-1", [sent])
    finally:
        holder.close()
    expected = {
        "accepted": ("sent", "sent"),
        "refused": ("bounced", "refused"),
        "outcome waiting": ("delivered", "delivered"),
    }
    with engine.connect() as conn:
        recorded = conn.execute(select(send_attempts.c.status)).scalar_one()
    assert (statuses(ledger)["a@example.com"][0], recorded) == expected[case]
    assert ledger.inbox_size() == 0
    engine.dispose()


@contextlib.contextmanager
def record_sent_paused_after_its_update(postgres_url: str):
    """A Postgres ledger with one contact's first attempt, and record_sent of it (accepted as "m1") in a
    thread of its own, paused right after its UPDATE of the attempt (not committed): yields the ledger,
    the attempt, and a function that lets record_sent go on and returns once it is done."""
    engine = engine_that_waits_for_locks_at_most(postgres_url, 10)
    ledger = Ledger(engine)
    claimed = stage_and_claim(ledger, "run-1", ["a@example.com"])
    [attempt] = ledger.start_attempts("run-1", claimed.batches[0])
    attempts_updated, go_on = threading.Event(), threading.Event()

    def pause_after_the_attempts_update(conn, cursor, statement, parameters, context, executemany):
        if "UPDATE send_attempts" in statement and threading.current_thread().name.startswith("record-sent"):
            attempts_updated.set()
            assert go_on.wait(20)

    event.listen(engine, "after_cursor_execute", pause_after_the_attempts_update)
    recording = ThreadPoolExecutor(1, thread_name_prefix="record-sent")
    try:
        recorded = recording.submit(ledger.record_sent, "run-1", [AcceptedAttempt(attempt.email, 1, "m1")])
        assert attempts_updated.wait(20)

        def finish() -> None:
            go_on.set()
            recorded.result(timeout=20)

        yield ledger, attempt, finish
    finally:
        go_on.set()
        recording.shutdown()
        event.remove(engine, "after_cursor_execute", pause_after_the_attempts_update)
        engine.dispose()


@pytest.mark.postgres
@pytest.mark.timeout(60)
def test_an_outcome_pushed_while_its_send_is_recorded_waits_for_it_and_applies(postgres_url):
    """record_sent does not lock an accepted send's contact: an outcome pushed while the send is being
    recorded (found by its idempotency key, the attempt not yet committed as sent) takes the contact, waits
    for the attempt, and applies to it once the send is committed: not kept in the inbox, no deadlock."""
    outcomes = ThreadPoolExecutor(1)
    with record_sent_paused_after_its_update(postgres_url) as (ledger, attempt, finish):
        try:
            pushed = outcomes.submit(
                ledger.record_outcomes,
                [OutcomeEvent("bounced", provider_message_id="m1", idempotency_key=attempt.idempotency_key)],
            )
            time.sleep(1)
            assert not pushed.done(), "the outcome waits for the attempt being recorded"
            finish()
            counts = pushed.result(timeout=20)
        finally:
            outcomes.shutdown()
        assert (counts.applied, counts.inboxed) == (1, 0)
        assert statuses(ledger)["a@example.com"][0] == "bounced" and ledger.inbox_size() == 0


@pytest.mark.postgres
@pytest.mark.timeout(60)
def test_an_outcome_kept_in_the_inbox_while_its_send_is_recorded_is_applied_right_after(postgres_url):
    """An outcome by message id only (a bounce report) that comes while the send is being recorded finds
    no recorded send and waits in the inbox; record_sent applies it right after its commit, in a
    transaction of its own (inside its own, it would take the contact after the attempt it holds)."""
    with record_sent_paused_after_its_update(postgres_url) as (ledger, _, finish):
        assert ledger.record_outcomes([OutcomeEvent("bounced", provider_message_id="m1")]).inboxed == 1
        finish()
        assert statuses(ledger)["a@example.com"][0] == "bounced" and ledger.inbox_size() == 0


def _claim_in_process(url: str, run_id: str, emails: list[str], barrier, queue) -> None:
    ledger = Ledger(connect(url))
    ledger.renew_lease(run_id)
    ledger.stage(run_id, contacts(*emails))
    barrier.wait(timeout=60)  # every process claims at the same moment
    queue.put((run_id, ledger.claim(run_id, 500, 1024).owned))


def test_concurrent_claimers_never_claim_a_contact_twice(ledger, ledger_url):
    runs = {f"run-{n}": [f"u{i}@example.com" for i in range(n * 300, n * 300 + 1500)] for n in range(4)}
    context = multiprocessing.get_context("spawn")
    queue, barrier = context.Queue(), context.Barrier(len(runs))
    processes = [
        context.Process(target=_claim_in_process, args=(ledger_url, run_id, emails, barrier, queue))
        for run_id, emails in runs.items()
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0
    owned = dict(queue.get(timeout=5) for _ in processes)
    ledger_rows = statuses(ledger)
    unique = {email for emails in runs.values() for email in emails}
    assert set(ledger_rows) == unique
    assert sum(owned.values()) == len(unique), "every contact is owned by exactly one run"
    for run_id, count in owned.items():
        assert count == sum(1 for _, owner, _ in ledger_rows.values() if owner == run_id)


@contextlib.contextmanager
def plans_of(engine, wanted: Callable[[str], bool]):
    """The scans (``_scans``) of every statement ``wanted`` picks, run under EXPLAIN and then for real."""
    plans: list[list[tuple[str, str, str | None]]] = []

    def explain(conn, cursor, statement, parameters, context, executemany):
        return ("EXPLAIN (FORMAT JSON) " + statement if wanted(statement) else statement), parameters

    def keep(conn, cursor, statement, parameters, context, executemany):
        if statement.startswith("EXPLAIN"):
            plans.append(_scans(cursor.fetchone()[0][0]["Plan"]))
            cursor.execute(statement.removeprefix("EXPLAIN (FORMAT JSON) "), parameters)

    event.listen(engine, "before_cursor_execute", explain, retval=True)
    event.listen(engine, "after_cursor_execute", keep)
    try:
        yield plans
    finally:
        event.remove(engine, "before_cursor_execute", explain)
        event.remove(engine, "after_cursor_execute", keep)


def _scans(plan: dict) -> list[tuple[str, str, str | None]]:
    """(node type, table, index) of every scan of a table or an index in an EXPLAIN (FORMAT JSON) plan."""
    scans = ("Relation Name" in plan or "Index Name" in plan) and plan["Node Type"] != "ModifyTable"
    found = [(plan["Node Type"], plan.get("Relation Name"), plan.get("Index Name"))] if scans else []
    return found + [scan for child in plan.get("Plans", []) for scan in _scans(child)]


@contextlib.contextmanager
def sqlite_plans_of(engine, wanted: Callable[[str], bool]):
    """SQLite: (statement, the steps of its EXPLAIN QUERY PLAN, e.g. 'SEARCH t USING INDEX ix (a=?)') of every
    statement ``wanted`` picks, explained on its connection right before it runs."""
    plans: list[tuple[str, list[str]]] = []

    def explain(conn, cursor, statement, parameters, context, executemany):
        if wanted(statement) and not executemany:
            steps = cursor.connection.execute("EXPLAIN QUERY PLAN " + statement, parameters).fetchall()
            plans.append((statement, [step[-1] for step in steps]))

    event.listen(engine, "before_cursor_execute", explain)
    try:
        yield plans
    finally:
        event.remove(engine, "before_cursor_execute", explain)


def test_on_sqlite_a_pokes_counts_and_resends_read_what_they_need_not_the_whole_run(tmp_path):
    """SQLite has no statistics on the ledger, and its planner took the run's whole index where a narrower
    one serves: a count of the run's attempts not accepted yet read every attempt of the run through
    ix_send_attempts_run (0.15 s a count at 1M contacts; a poke counts once a poll), and requeue_blocked
    read every contact of the run changed before the backoff's end through ix_sent_contacts_run_updated
    (0.33 s a poke). They must read the unaccepted attempts' partial index and the run's blocked contacts."""
    ledger = Ledger(connect(f"sqlite:///{tmp_path / 'ledger.db'}"))
    upgrade(ledger.engine)
    claimed = stage_and_claim(ledger, "run-1", [f"u{i}@example.com" for i in range(20)], batch_size=10)
    send_everything(ledger, "run-1", claimed.batches[:1], "blocked")

    def wanted(statement: str) -> bool:
        return "count(" in statement or statement.startswith("UPDATE sent_contacts") or "batch_no DESC" in statement

    with sqlite_plans_of(ledger.engine, wanted) as plans:
        waiting, unsent = ledger.count_awaiting_outcome("run-1"), ledger.count_unsent("run-1")
        requeued = ledger.requeue_blocked("run-1", 3, utcnow(), 500, 1024)
    ledger.engine.dispose()
    # one batch of the 10 blocked and the 10 never sent, numbered after batch 1 (its 10 still sending)
    assert (waiting, unsent, requeued) == (0, 10, [2])
    unaccepted = [step for _, plan in plans for step in plan if "send_attempts" in step]
    assert len(unaccepted) >= 3, plans  # the two counts, and requeue_blocked's count of what is due
    assert all("ix_send_attempts_unaccepted (run_id=? AND provider_message_id=?)" in s for s in unaccepted), plans
    [requeue] = [plan for statement, plan in plans if statement.startswith("UPDATE sent_contacts SET status")]
    assert requeue == ["SEARCH sent_contacts USING INDEX ix_sent_contacts_run_status_batch (run_id=? AND status=?)"]
    # the round's first batch number: the end of the run's sending contacts in the index, no sort
    [next_number] = [plan for statement, plan in plans if "batch_no DESC" in statement]
    assert next_number == [
        "SEARCH sent_contacts USING COVERING INDEX ix_sent_contacts_run_status_batch"
        " (run_id=? AND status=? AND batch_no>?)"
    ], next_number


@pytest.mark.postgres
def test_chunk_updates_are_driven_by_the_primary_key_whatever_the_statistics(postgres_url):
    """Issue 14: statistics taken before a bulk claim know nothing of the run, so the planner believed
    that few of its rows were 'sending', and every 500-row chunk of record_sent scanned all of them: a
    hash join over ix_sent_contacts_run_status (sent_contacts), a nested loop over a seq scan (send_attempts),
    quadratic in the run's size. Each chunk must find its rows by primary key (10 rows, so that scanning
    the 20k-row table is honestly the dearer plan)."""
    engine = connect(postgres_url)
    upgrade(engine)
    ledger = Ledger(engine)
    send_everything(ledger, "earlier", stage_and_claim(ledger, "earlier", ["x@example.com"]).batches, "delivered")
    with ledger.engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")  # the last statistics before the bulk claim
    [batch] = stage_and_claim(ledger, "big", [f"u{i}@example.com" for i in range(20_000)], max_batches=1).batches
    attempts = ledger.start_attempts("big", batch)
    sent, unsent = attempts[:10], attempts[10:20]
    ledger.record_sent("big", [AcceptedAttempt(a.email, a.attempt, f"id-{a.email}") for a in sent])

    plans = []

    def explain(conn, cursor, statement, parameters, context, executemany):
        updates = " UPDATE " in f" {statement}" and " FOR UPDATE" not in statement  # not the lookup's lock
        return ("EXPLAIN (FORMAT JSON) " + statement if updates else statement), parameters

    def keep(conn, cursor, statement, parameters, context, executemany):
        if statement.startswith("EXPLAIN"):
            plans.append(_scans(cursor.fetchone()[0][0]["Plan"]))

    event.listen(ledger.engine, "before_cursor_execute", explain, retval=True)
    event.listen(ledger.engine, "after_cursor_execute", keep)
    try:
        refused, accepted = unsent[:1], unsent[1:]  # a refused attempt's contact is updated (bounced) too
        ledger.record_sent(
            "big",
            [AcceptedAttempt(a.email, a.attempt, None, "550 5.1.1") for a in refused]
            + [AcceptedAttempt(a.email, a.attempt, f"id-{a.email}") for a in accepted],
        )
        ledger.record_outcomes([OutcomeEvent("delivered", provider_message_id=f"id-{a.email}") for a in sent])
    finally:
        event.remove(ledger.engine, "before_cursor_execute", explain)
        event.remove(ledger.engine, "after_cursor_execute", keep)
        ledger.engine.dispose()
    contacts_by_pk = [("Index Scan", "sent_contacts", "sent_contacts_pkey")]
    attempts_by_pk = [("Index Scan", "send_attempts", "send_attempts_pkey")]
    # record_sent updates contacts (the refused), then attempts; record_outcomes (its rows locked already)
    # attempts, then contacts
    assert plans == [contacts_by_pk, attempts_by_pk, attempts_by_pk, contacts_by_pk]


@pytest.mark.postgres
def test_without_statistics_sends_and_outcomes_lock_and_update_their_rows_by_primary_key(postgres_url):
    """Issue 14: on tables just bulk-loaded and never analysed (autovacuum behind, or off), the planner
    read the whole of a 20k-contact ledger for every chunk: record_sent's and record_outcomes' row locks
    (an IN list: a seq scan with a hashed filter; a join: a hash join over seq scans), and a 5,000-row
    UPDATE (a hash join over a seq scan). Every lock and update of a chunk must find its rows by key."""
    engine = connect(postgres_url)
    upgrade(engine)
    ledger = Ledger(engine)
    [batch] = stage_and_claim(ledger, "big", [f"u{i}@example.com" for i in range(20_000)], max_batches=1).batches
    attempts = ledger.start_attempts("big", batch)
    sent = attempts[:5_000]
    ledger.record_sent("big", [AcceptedAttempt(a.email, a.attempt, f"id-{a.email}") for a in sent[:4_500]])

    def chunk_work(statement: str) -> bool:
        return "FOR UPDATE" in statement or statement.startswith("WITH given AS MATERIALIZED")

    try:
        with plans_of(ledger.engine, chunk_work) as plans:
            ledger.record_sent("big", [AcceptedAttempt(a.email, a.attempt, f"id-{a.email}") for a in sent[4_500:]])
            events = [OutcomeEvent("delivered", provider_message_id=f"id-{a.email}") for a in sent]
            counts = ledger.record_outcomes(events)
    finally:
        ledger.engine.dispose()
    assert counts.applied == 5_000
    assert len(plans) >= 5, "record_sent: an update (no lock: all accepted); record_outcomes: two locks, two updates"
    for scans in plans:
        assert scans and all(node == "Index Scan" and index and index.endswith("_pkey") for node, _, index in scans), (
            scans
        )


@pytest.mark.postgres
def test_outcome_lookups_probe_the_message_id_index_whatever_the_statistics(postgres_url):
    """Issue 14: at 1M rows on the stack, statistics taken while few message ids were known made the
    planner expect ~140 attempts per message id, so each 1000-id lookup of record_outcomes read the whole
    of send_attempts (parallel seq scans and a hash join, 1.2 s): ~1,000 outcomes a second. Each id must
    be an index probe, and the rows then locked through their primary keys (the contacts first)."""
    engine = connect(postgres_url)
    upgrade(engine)
    ledger = Ledger(engine)
    earlier = stage_and_claim(ledger, "earlier", [f"e{i}@example.com" for i in range(3_000)], batch_size=3_000)
    [attempts] = [ledger.start_attempts("earlier", b) for b in earlier.batches]
    # statistics that expect ~1/150 of the attempts per message id (too many values for the list of
    # common ones, too few to scale with the table)
    ledger.record_sent("earlier", [AcceptedAttempt(a.email, a.attempt, f"q-{n % 150}") for n, a in enumerate(attempts)])
    with ledger.engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
    [batch] = stage_and_claim(ledger, "big", [f"u{i}@example.com" for i in range(20_000)], max_batches=1).batches
    sent = ledger.start_attempts("big", batch)[:20]
    ledger.record_sent("big", [AcceptedAttempt(a.email, a.attempt, f"id-{a.email}") for a in sent])

    try:
        selects = plans_of(ledger.engine, lambda statement: statement.startswith("SELECT"))
        with selects as plans, ledger.engine.begin() as conn:
            found = ledger._find_attempts(
                conn, [OutcomeEvent("delivered", provider_message_id=f"id-{a.email}") for a in sent]
            )
    finally:
        ledger.engine.dispose()
    assert {(row.email, row.attempt) for row in found.values()} == {(a.email, a.attempt) for a in sent}
    probe, lock_contacts, lock = plans
    by_message_id = {("Index Scan", "send_attempts", "ix_send_attempts_provider_message_id")} | {
        ("Bitmap Heap Scan", "send_attempts", None),
        ("Bitmap Index Scan", None, "ix_send_attempts_provider_message_id"),
    }
    assert probe and set(probe) <= by_message_id, f"each message id found through its index: {probe}"
    contacts_by_pk = {("Index Scan", "sent_contacts", "sent_contacts_pkey")} | {
        ("Bitmap Heap Scan", "sent_contacts", None),
        ("Bitmap Index Scan", None, "sent_contacts_pkey"),
    }
    assert lock_contacts and set(lock_contacts) <= contacts_by_pk, f"contacts locked first: {lock_contacts}"
    assert lock == [
        ("Index Scan", "send_attempts", "send_attempts_pkey"),
        ("Index Scan", "sent_contacts", "sent_contacts_pkey"),
    ]


@pytest.mark.postgres
def test_a_claim_with_known_contacts_finds_what_is_due_by_primary_key_whatever_the_statistics(postgres_url):
    """Issue 14: a claim whose file holds contacts the ledger knows counts the run's contacts with a
    message due. On its just-inserted rows, never analysed, Postgres checked each unsent attempt's contact
    by scanning the run's sending contacts through their (run, state) index: quadratic (30k contacts: 39 s;
    four overlapping 250k-contact claims stalled for minutes). Each contact must be one primary-key probe."""
    engine = connect(postgres_url)
    upgrade(engine)
    ledger = Ledger(engine)
    stage_and_claim(ledger, "earlier", [f"u{i}@example.com" for i in range(0, 8_000, 4)])
    try:
        counts = plans_of(ledger.engine, lambda statement: "provider_message_id IS NULL" in statement)
        with counts as plans:
            claimed = stage_and_claim(ledger, "big", [f"u{i}@example.com" for i in range(8_000)], max_batches=8)
    finally:
        ledger.engine.dispose()
    assert claimed.to_send == 6_000 and plans
    for scans in plans:
        contacts = [index for _, table, index in scans if table == "sent_contacts"]
        assert contacts[-1] == "sent_contacts_pkey", f"each attempt's contact by its key: {scans}"
        assert contacts.count("ix_sent_contacts_run_status_batch") <= 1, f"the run's contacts read once: {scans}"


@pytest.mark.postgres
# Beside other tests' Postgres load, 148 of 2,000 were heap-only in one run of two: alone, as it always passed.
@pytest.mark.alone
def test_an_outcome_updates_its_attempt_without_writing_an_index_entry(postgres_url):
    """Issue 14: recording an outcome changes the attempt's state, which no index of send_attempts names
    (migration 0007), and its pages keep room for the new row version: an outcome's update of its attempt
    is heap-only (HOT), where it wrote an entry in each of the table's 5 indexes before (none was). On
    2,000 attempts, recorded in one transaction while a poll's read snapshot is open (as in a sensor), so
    no version they replace can be pruned to make room: the room must be there already. It is for at
    least 90% (96% here; a page whose room a send's version took has none left for the outcome's)."""
    engine = connect(postgres_url)
    upgrade(engine)
    ledger = Ledger(engine)
    [batch] = stage_and_claim(ledger, "run-1", [f"u{i}@example.com" for i in range(2_000)], max_batches=1).batches
    attempts = ledger.start_attempts("run-1", batch)
    ledger.record_sent("run-1", [AcceptedAttempt(a.email, a.attempt, f"id-{a.email}") for a in attempts])
    sends = row_updates(engine, "send_attempts", at_least=len(attempts))["updates"]
    events = [OutcomeEvent("delivered", provider_message_id=m.message_id) for m in ledger.pending_messages("run-1")]
    poll = ledger.pending_messages("run-1")
    try:
        next(poll)  # a sensor's poll: its read snapshot stays open while the outcomes are recorded
        assert ledger.record_outcomes(events).applied == len(attempts)
    finally:
        poll.close()
    try:
        counted = row_updates(engine, "send_attempts", at_least=sends + len(attempts))
    finally:
        engine.dispose()
    updates, heap_only = counted["updates"], counted["heap_only"]
    assert updates - sends == len(attempts)
    assert heap_only >= 0.9 * len(attempts), f"{updates - sends} outcomes: {heap_only} heap-only updates"


def test_the_ledger_compiles_no_statement_just_in_time(postgres_url):
    """Issue 14: at 200k rows, statistics made a 1,000-id lookup of record_outcomes cost more than
    jit_above_cost (its estimates are high on purpose: bulk.probe), and Postgres spent 40 ms compiling it
    for 4 ms of work, every chunk. Here every statement is over the threshold: none may be compiled."""
    engine = connect(postgres_url)
    upgrade(engine)
    lookup = bulk.probe(send_attempts, "provider_message_id", [f"id-{n}" for n in range(1_000)], ("email",))
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SET jit_above_cost = 10")
            compiled = lookup.compile(conn, compile_kwargs={"render_postcompile": True})
            [[[plan]]] = conn.exec_driver_sql(
                f"EXPLAIN (ANALYZE, FORMAT JSON) {compiled}", compiled.construct_params()
            ).all()
    finally:
        engine.dispose()
    assert plan["Plan"]["Total Cost"] > 10
    assert "JIT" not in plan, plan["JIT"]


@pytest.mark.timeout(30)  # a write waiting on the stream's lock would wait 60 s, then fail
def test_pending_messages_stream_while_their_outcomes_are_recorded(ledger, monkeypatch):
    """Issue 14: a poll streams the pending messages (a page at a time, not 800k at once) and records
    outcomes as it reads. The open read must not stop those writes: on SQLite it takes no write lock."""
    from welcome_mailer.ledger import outcomes

    monkeypatch.setattr(outcomes, "PENDING_PAGE", 10)
    [batch] = stage_and_claim(ledger, "run", [f"u{i}@example.com" for i in range(35)], batch_size=35).batches
    attempts = ledger.start_attempts("run", batch)
    ledger.record_sent("run", [AcceptedAttempt(a.email, a.attempt, f"id-{a.email}") for a in attempts])
    streamed = []
    for message in ledger.pending_messages("run"):
        streamed.append(message.email)
        counts = ledger.record_outcomes([OutcomeEvent("delivered", provider_message_id=message.message_id)])
        assert counts.applied == 1
    assert sorted(streamed) == sorted(a.email for a in attempts), "every pending message once"
    assert list(ledger.pending_messages("run")) == []
    assert {status for status, _, _ in statuses(ledger).values()} == {"delivered"}


@pytest.mark.postgres
def test_a_take_over_locks_the_dead_runs_contacts_in_key_order(postgres_url):
    """Two runs taking over one dead run's contacts must wait on each other in one order, never in a
    cycle: a claim locks the contacts it takes over in key order, whatever order its plan reads them in
    (here the table holds b before a). While it waits for b, it already holds a."""
    engine = connect(postgres_url)
    upgrade(engine)
    ledger = Ledger(engine)
    stage_and_claim(ledger, "dead", ["b@example.com"])
    stage_and_claim(ledger, "dead", ["a@example.com"])
    with ledger.engine.begin() as conn:  # the run stopped renewing its lease
        conn.execute(update(ledger_runs).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    taker = Ledger(connect(postgres_url))

    @event.listens_for(taker.engine, "connect")
    def read_in_table_order(dbapi_connection, _record) -> None:  # as a plan over a big table would
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET enable_nestloop = off; SET enable_mergejoin = off")
        dbapi_connection.commit()

    taker.renew_lease("taker")
    taker.stage("taker", contacts("a@example.com", "b@example.com"))
    holder = ledger.engine.connect()
    claims = ThreadPoolExecutor(1)
    try:
        holder.exec_driver_sql("SELECT 1 FROM sent_contacts WHERE email = 'b@example.com' FOR UPDATE")
        claimed = claims.submit(taker.claim, "taker", 500, 8)
        deadline = time.monotonic() + 20
        with ledger.engine.connect() as watcher:
            waiting = (
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            while not watcher.exec_driver_sql(waiting).scalar_one():
                watcher.rollback()  # pg_stat_activity is read once a transaction
                assert time.monotonic() < deadline and not claimed.done(), "the claim never waited for b"
                time.sleep(0.05)
        with pytest.raises(OperationalError, match="could not obtain lock"), ledger.engine.connect() as other:
            other.exec_driver_sql("SELECT 1 FROM sent_contacts WHERE email = 'a@example.com' FOR UPDATE NOWAIT")
        holder.rollback()
        assert claimed.result(timeout=30).taken_over == 2
    finally:
        holder.close()  # releases b, whatever happened
        claims.shutdown()
        taker.engine.dispose()
        ledger.engine.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("action", ["unsubscribe", "suppress"])
def test_unsubscribe_and_suppress_win_over_a_claim_still_inserting_the_contact(postgres_url, action):
    """A claim has inserted the contact but not committed: unsubscribing (or suppressing) it waits for that
    claim, then changes it. Before, its update found no row, its insert skipped the conflict, and the
    contact was emailed once."""
    engine = connect(postgres_url)
    upgrade(engine)
    ledger = Ledger(engine)
    ledger.renew_lease("run-1")
    ledger.stage("run-1", contacts("a@example.com"))
    claiming = engine.connect()
    changes = ThreadPoolExecutor(1)
    try:
        claiming.begin()
        claiming.execute(  # what claim's insert leaves until its transaction commits
            sent_contacts.insert().values(
                email="a@example.com", name="A", status="sending", attempts=1, claim_attempts=1, run_id="run-1",
                batch_no=0, created_at=utcnow(), updated_at=utcnow(),
            )
        )  # fmt: skip
        audit = {"actor": "test", "action": "suppress", "reason": "asked by phone"}
        change = (
            changes.submit(ledger.unsubscribe, "a@example.com")
            if action == "unsubscribe"
            else changes.submit(ledger.suppress, ["a@example.com"], audit)
        )
        time.sleep(0.5)
        assert not change.done(), "it waits for the claim's row"
        claiming.commit()
        assert change.result(timeout=10), "it changed the claimed contact"
    finally:
        claiming.close()
        changes.shutdown()
    assert statuses(ledger)["a@example.com"][0] == ("unsubscribed" if action == "unsubscribe" else "suppressed")
    assert ledger.start_attempts("run-1", 0) == [], "so it is never sent"
    engine.dispose()


@pytest.mark.postgres
@pytest.mark.timeout(30)
def test_an_outcome_its_message_already_has_locks_nothing(postgres_url):
    """A webhook's duplicate (or a lookup after the push) changes nothing, and takes no lock: it is not
    held up by a writer holding the message's row, and holds up no one."""
    engine = engine_that_waits_for_locks_at_most(postgres_url, 3)
    ledger = Ledger(engine)
    claimed = stage_and_claim(ledger, "run-1", ["a@example.com", "b@example.com"])
    send_everything(ledger, "run-1", claimed.batches, "delivered")
    holder = engine.connect()
    try:
        holder.exec_driver_sql("SELECT 1 FROM send_attempts JOIN sent_contacts USING (email) FOR UPDATE")
        duplicates = [
            OutcomeEvent("delivered", provider_message_id=f"id-{e}-1") for e in ("a@example.com", "b@example.com")
        ]
        weaker = OutcomeEvent("blocked", idempotency_key=idempotency_key("a@example.com", 1))
        counts = ledger.record_outcomes([*duplicates, weaker])
    finally:
        holder.close()
    assert (counts.applied, counts.unchanged, counts.inboxed) == (0, 3, 0)
    bounce = ledger.record_outcomes([OutcomeEvent("bounced", provider_message_id="id-a@example.com-1")])
    assert (bounce.applied, bounce.unchanged) == (1, 0), "a stronger outcome still applies"
    assert {e: s[0] for e, s in statuses(ledger).items()} == {"a@example.com": "bounced", "b@example.com": "delivered"}
    engine.dispose()


def _expire_leases(ledger: Ledger) -> None:
    with ledger.engine.begin() as conn:  # the runs stopped renewing their leases
        conn.execute(update(ledger_runs).values(lease_expires_at=utcnow() - timedelta(seconds=1)))


def test_a_dispatched_attempt_taken_over_is_parked_by_the_taker_whatever_the_dead_run_says_late(ledger):
    """A dead run handed X to a transport without idempotency (SMTP) and got no reply yet. The taker owns
    the attempt now: the dead run's late reply changes nothing, and the taker parks it as unconfirmed
    instead of sending it again."""
    claimed = stage_and_claim(ledger, "dead", ["x@example.com"])
    [attempt] = ledger.start_attempts("dead", claimed.batches[0], resend_unconfirmed=False)
    ledger.mark_dispatched("dead", [attempt])
    _expire_leases(ledger)
    taker = stage_and_claim(ledger, "taker", ["x@example.com"])
    ledger.record_sent("dead", [AcceptedAttempt(attempt.email, attempt.attempt, "m-late")])
    assert ledger.start_attempts("taker", taker.batches[0], resend_unconfirmed=False) == [], "never sent twice"
    assert statuses(ledger)["x@example.com"] == ("unconfirmed", "taker", 1)
    with ledger.engine.connect() as conn:
        assert tuple(conn.execute(select(send_attempts.c.status, send_attempts.c.run_id)).one()) == (
            "unconfirmed",
            "taker",
        )


def test_a_run_whose_contacts_were_taken_over_cannot_dispatch_them(ledger):
    """A send task that outlived its run's lease: the taker has X pending (it will send it); the expired
    run's mark_dispatched raises and changes nothing, so its send task sends none of the chunk."""
    claimed = stage_and_claim(ledger, "slow", ["x@example.com", "y@example.com"])
    mine = ledger.start_attempts("slow", claimed.batches[0], resend_unconfirmed=False)
    _expire_leases(ledger)
    taker = stage_and_claim(ledger, "taker", ["x@example.com"])
    with pytest.raises(ContactsTakenOver, match="no longer holds 1 of these 2 attempts"):
        ledger.mark_dispatched("slow", mine)
    with ledger.engine.connect() as conn:
        rows = dict(conn.execute(select(send_attempts.c.email, send_attempts.c.status)).all())
    assert rows == {"x@example.com": "pending", "y@example.com": "pending"}, "all or nothing"
    [theirs] = ledger.start_attempts("taker", taker.batches[0], resend_unconfirmed=False)
    ledger.mark_dispatched("taker", [theirs])  # the taker sends it, once


@pytest.mark.postgres
@pytest.mark.timeout(60)
def test_erase_takes_the_contact_before_its_inbox_events_as_record_sent_does(postgres_url):
    """record_sent holds the contact, then removes the inbox events its send matched; an erase of that
    contact must wait for the contact without holding those events meanwhile, or the two wait on each
    other."""
    engine = engine_that_waits_for_locks_at_most(postgres_url, 5)
    ledger = Ledger(engine, erase_key=b"k" * 32)
    claimed = stage_and_claim(ledger, "run-1", ["a@example.com"])
    [attempt] = ledger.start_attempts("run-1", claimed.batches[0])
    assert ledger.record_outcomes([OutcomeEvent("delivered", "m1", attempt.idempotency_key)]).inboxed == 1
    writer = engine.connect()
    erasing = ThreadPoolExecutor(1)
    try:
        writer.exec_driver_sql("UPDATE sent_contacts SET updated_at = now() WHERE email = 'a@example.com'")
        audit = {"actor": "test", "action": "erase", "reason": "asked"}
        erased = erasing.submit(ledger.erase, "a@example.com", audit)
        time.sleep(1)
        assert not erased.done(), "erase waits for the contact"
        writer.exec_driver_sql("DELETE FROM outcome_inbox")  # as record_sent's _apply_inbox
        writer.commit()  # the writer got the inbox rows: no cycle
        assert erased.result(timeout=20)["sent_contacts"] == 1
    finally:
        writer.close()
        erasing.shutdown()
        engine.dispose()
    assert statuses(ledger) == {}


@pytest.mark.postgres
def test_rows_reach_postgres_as_array_literals_whatever_their_characters(postgres_url):
    """bulk.unnest sends each column as one text array literal: quotes, backslashes, commas, braces,
    spaces, the word NULL and non-ASCII come back as they went, None as NULL, datetimes and integers typed."""
    from datetime import datetime

    from welcome_mailer.ledger import bulk

    awkward = ['o"brien@example.com', "back\\slash", None, "a,b}{c", " spaced ", "NULL", "Zoë 名前", ""]
    rows = [
        {"email": value, "attempt": n, "updated_at": datetime(2026, 12, 5, 8, n, 0, 123456)}
        for n, value in enumerate(awkward)
    ]
    given = bulk.unnest(send_attempts, rows, [("email", "email"), ("attempt", "attempt"), ("updated_at", "updated_at")])
    engine = connect(postgres_url)
    with engine.connect() as conn:
        found = conn.execute(select(given)).all()
    engine.dispose()

    assert [tuple(row) for row in found] == [(r["email"], r["attempt"], r["updated_at"]) for r in rows]
