"""What every run must leave behind, proven from the outside: the ESP's own message log and the ledger.

The expected contacts are computed here independently of the pipeline's parser (csv module plus
email-validator), so a parser bug cannot hide itself.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import create_engine, select

FINAL = {"delivered", "bounced"}


def expected_contacts(*paths: Path) -> dict[str, str]:
    """email -> name of the first valid occurrence, over the files in order."""
    contacts: dict[str, str] = {}
    for path in paths:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            for row in csv.reader(handle, skipinitialspace=True):
                if len(row) < 2:
                    continue
                try:
                    email = validate_email(row[1].strip().lower(), check_deliverability=False).normalized.lower()
                except EmailNotValidError:
                    continue
                contacts.setdefault(email, " ".join(row[0].split()))
    return contacts


def messages_by_recipient(messages: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = defaultdict(list)
    for message in messages:  # the log is in acceptance order
        grouped[message["to"]].append(message)
    return grouped


def assert_run_invariants(messages: list[dict], contacts: dict[str, str], max_attempts: int) -> dict[str, int]:
    """Nobody got two emails that could both arrive; nobody was forgotten; bounced stays bounced.
    Returns the final outcome count per status."""
    by_recipient = messages_by_recipient(messages)
    strangers = set(by_recipient) - set(contacts)
    assert not strangers, f"messages to addresses that were not valid contacts: {sorted(strangers)[:5]}"
    forgotten = set(contacts) - set(by_recipient)
    assert not forgotten, f"valid contacts that got no message: {sorted(forgotten)[:5]}"
    assert len({m["idempotency_key"] for m in messages}) == len(messages), "an idempotency key was reused"
    outcomes: dict[str, int] = defaultdict(int)
    for email, history in by_recipient.items():
        statuses = [m["status"] for m in history]
        assert "sent" not in statuses, f"{email}: a message never got an outcome: {statuses}"
        assert all(s == "blocked" for s in statuses[:-1]), f"{email}: a message followed a final one: {statuses}"
        assert len(history) <= max_attempts, f"{email}: {len(history)} messages, more than {max_attempts}"
        if statuses[-1] == "blocked":
            assert len(history) == max_attempts, f"{email}: blocked but resent only {len(history)} times"
        name = contacts[email]
        assert all(m["text"] == f"Hi {name or 'there'}, Welcome!" for m in history), f"{email}: wrong greeting"
        outcomes[statuses[-1]] += 1
    return dict(outcomes)


def assert_ledger_matches(ledger_url: str, messages: list[dict]) -> None:
    """The ledger tells the same story as the ESP: status, attempts and ids per contact."""
    from welcome_mailer.ledger import send_attempts, sent_contacts

    engine = create_engine(ledger_url)
    with engine.connect() as conn:
        contacts = {row.email: row for row in conn.execute(select(sent_contacts))}
        attempts = {(row.email, row.attempt): row for row in conn.execute(select(send_attempts))}
    engine.dispose()
    by_recipient = messages_by_recipient(messages)
    assert set(contacts) >= set(by_recipient)
    for email, history in by_recipient.items():
        row = contacts[email]
        last = history[-1]["status"]
        assert row.status == ("failed" if last == "blocked" else last), f"{email}: ledger {row.status}, ESP {last}"
        assert row.attempts == len(history), f"{email}: ledger counts {row.attempts} attempts, ESP {len(history)}"
        assert attempts[(email, row.attempts)].provider_message_id == history[-1]["id"], "its latest attempt"
        for number, message in enumerate(history, 1):
            attempt = attempts[(email, number)]
            assert (attempt.provider_message_id, attempt.idempotency_key) == (message["id"], message["idempotency_key"])
