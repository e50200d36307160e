"""One ledger operation applies outcome events from every source: matched by provider message id or
idempotency key (never by run), idempotent, order-tolerant, kept in an inbox until their send is
recorded. On SQLite and Postgres (the ``ledger`` fixture)."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy

from tests.support.ledger import attempt_statuses, contact_status, sent, stage_and_claim
from welcome_mailer.ledger import AcceptedAttempt, sent_contacts
from welcome_mailer.vocabulary import OutcomeEvent, idempotency_key, utcnow


def test_an_event_is_matched_by_message_id_or_by_idempotency_key(ledger):
    ids = sent(ledger, "run", "a@example.com", "b@example.com")
    counts = ledger.record_outcomes(
        [
            OutcomeEvent("delivered", provider_message_id=ids["a@example.com"]),
            OutcomeEvent("bounced", idempotency_key=idempotency_key("b@example.com", 1)),
        ]
    )
    assert (counts.applied, counts.unchanged, counts.inboxed) == (2, 0, 0)
    assert (contact_status(ledger, "a@example.com"), contact_status(ledger, "b@example.com")) == (
        "delivered",
        "bounced",
    )


def test_an_event_found_by_its_message_id_is_not_looked_up_by_its_key_too(ledger):
    """Webhook events carry both: the key is looked up only for the events their ids did not find (a
    stale or foreign id), so a poll of a million such events costs a million lookups, not two million."""
    ids = sent(ledger, "run", "a@example.com", "b@example.com", "c@example.com")
    by_key: list[str] = []

    def note(conn, cursor, statement, parameters, context, executemany):
        if "idempotency_key" in statement.split("WHERE", 1)[-1] and "send_attempts" in statement:
            by_key.append(statement)

    sqlalchemy.event.listen(ledger.engine, "before_cursor_execute", note)
    try:
        counts = ledger.record_outcomes(
            [
                OutcomeEvent("delivered", ids[email], idempotency_key(email, 1))
                for email in ("a@example.com", "b@example.com")
            ]
        )
        assert counts.applied == 2
        assert by_key == [], "found by message id: no lookup by key"
        stale = OutcomeEvent("bounced", "an-id-the-ledger-never-saw", idempotency_key("c@example.com", 1))
        assert ledger.record_outcomes([stale]).applied == 1
        assert len(by_key) == 1, "an id that found nothing: its key is looked up"
    finally:
        sqlalchemy.event.remove(ledger.engine, "before_cursor_execute", note)
    assert [contact_status(ledger, f"{c}@example.com") for c in "abc"] == ["delivered", "delivered", "bounced"]


def _polled(ledger, run_id: str, outcome: str) -> dict[str, OutcomeEvent]:
    """A status lookup's events: one per pending message of the run, each with the message as polled."""
    return {
        m.email: OutcomeEvent(outcome, m.message_id, source="http_lookup", polled=m)
        for m in ledger.pending_messages(run_id)
    }


def test_a_polled_event_takes_its_attempt_as_the_poll_read_it(ledger):
    """SQLite: a status lookup's outcomes are written guarded by the state the poll read, with no lookup
    of their attempts (a third of recording an outcome), beside an event from elsewhere in the same
    transaction (looked up); Postgres locks what it reads: it looks them all up."""
    sent(ledger, "run", *(f"u{i}@example.com" for i in range(21)))
    events = _polled(ledger, "run", "delivered")
    events["u20@example.com"] = OutcomeEvent("delivered", idempotency_key=idempotency_key("u20@example.com", 1))
    lookups: list[str] = []

    def note(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().startswith("SELECT") and "send_attempts" in statement:
            lookups.append(statement)

    sqlalchemy.event.listen(ledger.engine, "before_cursor_execute", note)
    try:
        counts = ledger.record_outcomes(events.values())
    finally:
        sqlalchemy.event.remove(ledger.engine, "before_cursor_execute", note)
    assert (counts.applied, counts.unchanged, counts.inboxed) == (21, 0, 0)
    assert {contact_status(ledger, email) for email in events} == {"delivered"}
    assert set(attempt_statuses(ledger).values()) == {"delivered"}
    if ledger.engine.dialect.name == "sqlite":
        assert len(lookups) == 1, f"only the webhook's event (not polled) is looked up: {lookups}"
    else:
        assert len(lookups) > 1, lookups


def test_a_polled_event_whose_message_changed_since_the_poll_follows_the_rules(ledger):
    """What the poll read is only trusted when every guarded write finds it still so: a bounce pushed in
    between stays (a delivery never undoes it); a contact that moved on to a new attempt (a take-over)
    is not blocked by its old attempt's report; the rest of the poll's events are applied."""
    sent(ledger, "run", "a@example.com", "b@example.com", "c@example.com")
    delivered = _polled(ledger, "run", "delivered")
    blocked = _polled(ledger, "run", "blocked")
    ledger.record_outcomes([OutcomeEvent("bounced", delivered["a@example.com"].provider_message_id)])
    counts = ledger.record_outcomes([delivered["a@example.com"], delivered["c@example.com"]])
    assert (counts.applied, counts.unchanged) == (1, 1)
    assert contact_status(ledger, "a@example.com") == "bounced"
    assert contact_status(ledger, "c@example.com") == "delivered"
    with ledger.engine.begin() as conn:  # b@ moved on to a second attempt after the poll (a take-over)
        conn.execute(
            sqlalchemy.update(sent_contacts).where(sent_contacts.c.email == "b@example.com").values(attempts=2)
        )
    assert ledger.record_outcomes([blocked["b@example.com"]]).applied == 1
    assert attempt_statuses(ledger)[("b@example.com", 1)] == "blocked"
    assert contact_status(ledger, "b@example.com") == "sending", "blocked counts for the latest attempt only"


def test_a_contact_unsubscribed_after_the_poll_stays_so_whatever_else_the_transaction_holds(ledger):
    """The poll read a@'s second message as sent; then a@ unsubscribed (its contact only changes). One
    transaction holds the poll's delivery of that message and a bounce of a@'s first one (looked up): the
    contact is read both ways, so it is decided from the lookup alone, and unsubscribed outranks both."""
    ids = sent(ledger, "run", "a@example.com")
    ledger.record_outcomes([OutcomeEvent("blocked", provider_message_id=ids["a@example.com"])])
    [batch] = ledger.requeue_blocked("run", 5, utcnow() + timedelta(days=1), 500, 1024)
    [second] = ledger.start_attempts("run", batch)
    ledger.record_sent("run", [AcceptedAttempt(second.email, second.attempt, "m-second")])
    delivered = _polled(ledger, "run", "delivered")["a@example.com"]
    assert ledger.unsubscribe("a@example.com")
    ledger.record_outcomes([delivered, OutcomeEvent("bounced", provider_message_id=ids["a@example.com"])])
    assert contact_status(ledger, "a@example.com") == "unsubscribed"
    assert attempt_statuses(ledger) == {("a@example.com", 1): "bounced", ("a@example.com", 2): "delivered"}


def test_a_duplicate_event_changes_nothing(ledger):
    ids = sent(ledger, "run", "a@example.com")
    event = OutcomeEvent("delivered", provider_message_id=ids["a@example.com"], source="webhook")
    assert ledger.record_outcomes([event]).applied == 1
    again = ledger.record_outcomes([event, event])
    assert (again.applied, again.unchanged, again.inboxed) == (0, 2, 0)
    assert contact_status(ledger, "a@example.com") == "delivered"


@pytest.mark.parametrize(
    ("first", "then", "final"),
    [
        ("delivered", "bounced", "bounced"),  # a late bounce overrules a delivery
        ("bounced", "delivered", "bounced"),  # ...and a late delivery report never undoes a bounce
        ("delivered", "blocked", "delivered"),  # a delivered contact is never resent
        ("blocked", "delivered", "delivered"),
        ("delivered", "complained", "complained"),  # a spam report after the delivery report
        ("complained", "bounced", "complained"),  # whatever else is said, a complaint stays
        ("complained", "blocked", "complained"),
    ],
)
def test_the_strongest_outcome_wins_whatever_the_order(ledger, first, then, final):
    ids = sent(ledger, "run", "a@example.com")
    message = ids["a@example.com"]
    ledger.record_outcomes([OutcomeEvent(first, provider_message_id=message)])
    ledger.record_outcomes([OutcomeEvent(then, provider_message_id=message)])
    assert contact_status(ledger, "a@example.com") == final
    assert attempt_statuses(ledger)[("a@example.com", 1)] == final
    both_at_once = sent(ledger, "run-2", "b@example.com")["b@example.com"]
    ledger.record_outcomes(
        [OutcomeEvent(then, provider_message_id=both_at_once), OutcomeEvent(first, provider_message_id=both_at_once)]
    )
    assert contact_status(ledger, "b@example.com") == final


def test_an_event_for_an_unknown_message_is_kept_and_counted(ledger):
    counts = ledger.record_outcomes([OutcomeEvent("bounced", provider_message_id="nobody-sent-this")])
    assert (counts.applied, counts.inboxed) == (0, 1)
    assert ledger.inbox_size() == 1


def test_an_event_that_arrives_before_its_send_is_recorded_waits_in_the_inbox(ledger):
    claimed = stage_and_claim(ledger, "run", ["a@example.com"])
    [attempt] = ledger.start_attempts("run", claimed.batches[0])  # recorded, the provider answers...
    early = OutcomeEvent("bounced", idempotency_key=attempt.idempotency_key, source="webhook")
    assert ledger.record_outcomes([early]).inboxed == 1, "...but its webhook is faster than record_sent"
    assert contact_status(ledger, "a@example.com") == "sending"
    ledger.record_sent("run", [AcceptedAttempt(attempt.email, attempt.attempt, "m-1")])
    assert contact_status(ledger, "a@example.com") == "bounced"
    assert ledger.inbox_size() == 0
    by_id_first = OutcomeEvent("delivered", provider_message_id="m-2")
    claimed = stage_and_claim(ledger, "run-2", ["b@example.com"])
    [attempt] = ledger.start_attempts("run-2", claimed.batches[0])
    ledger.record_outcomes([by_id_first])
    ledger.record_sent("run-2", [AcceptedAttempt(attempt.email, attempt.attempt, "m-2")])
    assert contact_status(ledger, "b@example.com") == "delivered"


def test_a_late_bounce_after_the_run_ended_still_makes_the_contact_bounced(ledger):
    ids = sent(ledger, "run", "a@example.com")
    ledger.record_outcomes([OutcomeEvent("delivered", provider_message_id=ids["a@example.com"])])
    ledger.finish_run("run")
    ledger.record_outcomes([OutcomeEvent("bounced", provider_message_id=ids["a@example.com"], source="dsn")])
    assert contact_status(ledger, "a@example.com") == "bounced"
    later = stage_and_claim(ledger, "later", ["a@example.com"])
    assert (later.owned, later.batches) == (0, [])


def test_a_block_of_an_earlier_message_does_not_touch_the_contact(ledger):
    ids = sent(ledger, "run", "a@example.com")
    ledger.record_outcomes([OutcomeEvent("blocked", provider_message_id=ids["a@example.com"])])
    [batch] = ledger.requeue_blocked("run", 5, utcnow() + timedelta(days=1), 500, 1024)  # backoff over
    [second] = ledger.start_attempts("run", batch)
    ledger.record_sent("run", [AcceptedAttempt(second.email, second.attempt, "m-second")])
    ledger.record_outcomes([OutcomeEvent("blocked", provider_message_id=ids["a@example.com"])])  # a duplicate
    assert contact_status(ledger, "a@example.com") == "sent", "still waiting for the second message"
    ledger.record_outcomes([OutcomeEvent("delivered", provider_message_id=ids["a@example.com"])])
    assert contact_status(ledger, "a@example.com") == "delivered", "the first message did get through"


def test_a_complained_contact_is_never_claimed_again(ledger):
    ids = sent(ledger, "run", "a@example.com")
    ledger.record_outcomes([OutcomeEvent("complained", provider_message_id=ids["a@example.com"], source="webhook")])
    ledger.finish_run("run")
    later = stage_and_claim(ledger, "later", ["a@example.com"])
    assert (later.owned, later.batches) == (0, [])
    assert contact_status(ledger, "a@example.com") == "complained"


def test_unsubscribe_is_final_idempotent_and_outranks_every_outcome(ledger):
    ids = sent(ledger, "run", "a@example.com")
    assert ledger.unsubscribe("a@example.com") is True
    assert ledger.unsubscribe("a@example.com") is False, "a second click changes nothing"
    ledger.record_outcomes([OutcomeEvent("delivered", provider_message_id=ids["a@example.com"])])
    ledger.record_outcomes([OutcomeEvent("complained", provider_message_id=ids["a@example.com"])])
    assert contact_status(ledger, "a@example.com") == "unsubscribed"
    assert attempt_statuses(ledger)[("a@example.com", 1)] == "complained", "the message's own history is kept"
    assert list(ledger.pending_messages("run")) == [], "the run waits for it no more"
    ledger.finish_run("run")
    later = stage_and_claim(ledger, "later", ["a@example.com"])
    assert (later.owned, later.batches) == (0, [])


def test_unsubscribing_a_blocked_contact_stops_its_resends(ledger):
    ids = sent(ledger, "run", "a@example.com")
    ledger.record_outcomes([OutcomeEvent("blocked", provider_message_id=ids["a@example.com"])])
    ledger.unsubscribe("a@example.com")
    assert ledger.requeue_blocked("run", 5, utcnow() + timedelta(days=1), 500, 1024) == []
    assert ledger.count_in_flight("run") == 0


def test_an_address_unsubscribed_before_any_run_knew_it_is_never_claimed(ledger):
    assert ledger.unsubscribe("new@example.com") is True
    claimed = stage_and_claim(ledger, "run", ["new@example.com", "b@example.com"])
    assert (claimed.claimed_new, claimed.owned) == (1, 1)
    assert contact_status(ledger, "new@example.com") == "unsubscribed"


def test_events_are_recorded_in_bounded_transactions_as_a_source_yields_them(ledger, monkeypatch):
    """A poll of a million outcomes must not hold every row's lock until its end: each chunk is committed
    before the next is read, and the rules hold across chunks (the same counts as one chunk)."""
    from welcome_mailer.ledger import outcomes

    monkeypatch.setattr(outcomes, "OUTCOME_CHUNK", 2)
    ids = sent(ledger, "run", "a@example.com", "b@example.com", "c@example.com")
    seen_committed = []

    def source():
        yield OutcomeEvent("blocked", provider_message_id=ids["a@example.com"])
        yield OutcomeEvent("delivered", provider_message_id=ids["b@example.com"])
        # Read from another connection: the first chunk is already committed.
        seen_committed.append((contact_status(ledger, "a@example.com"), contact_status(ledger, "b@example.com")))
        yield OutcomeEvent("delivered", provider_message_id=ids["a@example.com"])  # stronger, in a later chunk
        yield OutcomeEvent("bounced", provider_message_id=ids["c@example.com"])
        yield OutcomeEvent("blocked", provider_message_id=ids["b@example.com"])  # weaker: changes nothing
        yield OutcomeEvent("delivered", provider_message_id="unknown")  # kept in the inbox

    counts = ledger.record_outcomes(source())
    assert seen_committed == [("blocked", "delivered")]
    assert (counts.applied, counts.unchanged, counts.inboxed) == (4, 1, 1)
    assert [contact_status(ledger, e) for e in ("a@example.com", "b@example.com", "c@example.com")] == [
        "delivered",
        "delivered",
        "bounced",
    ]
    assert ledger.inbox_size() == 1
