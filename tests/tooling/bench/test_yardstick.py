"""The bench's yardstick (include/bench/yardstick.py): every end-to-end figure is a ratio to it, so it must do
the package's whole job, durably. It is held to the run invariants, proven from the mock ESP's own log; its
tables tell the same story; and every attempt is committed before the provider sees it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import Counter

import pytest
from sqlalchemy import create_engine, text

from include.bench import yardstick
from tests.support import PROJECT_ROOT
from tests.support.esp import API_KEY
from tests.support.invariants import assert_run_invariants, expected_contacts
from welcome_mailer.ledger import Ledger, connect
from welcome_mailer.vocabulary import idempotency_key


def contacts_file(tmp_path, count: int):
    path = tmp_path / "contacts.csv"
    rows = [f"User {i}, user{i}@example.com, 555-0100, 1 Main St, Town, ST, 12345\n" for i in range(count)]
    path.write_text("".join(rows) + rows[7] + "Bad Row, not-an-address\n")  # a duplicate and a rejected row
    return path


def run_yardstick(csv_path, esp, ledger_url, *flags) -> dict:
    command = [sys.executable, "-m", "include.bench.yardstick", str(csv_path), "--esp-url", esp.url]
    command += ["--api-key", API_KEY, "--ledger-url", ledger_url, *flags]
    completed = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-2000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def attempt_rows(ledger_url) -> dict[tuple[str, int], tuple[str | None, str]]:
    """(email, attempt) -> (message id, status), as the yardstick's own table holds them."""
    engine = create_engine(ledger_url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT email, attempt, message_id, status FROM yardstick_attempts")).all()
    engine.dispose()
    return {(email, attempt): (message_id, status) for email, attempt, message_id, status in rows}


def logged_attempts(messages: list[dict]) -> dict[tuple[str, int], tuple[str, str]]:
    """(email, attempt) -> (message id, status) from the mock's log; each key checked to be that attempt's."""
    attempts = {}
    for message in messages:
        attempt = int(message["idempotency_key"].rsplit("-", 1)[1])
        assert message["idempotency_key"] == idempotency_key(message["to"], attempt)
        attempts[(message["to"], attempt)] = (message["id"], message["status"])
    return attempts


def test_the_yardstick_emails_every_contact_once_and_records_every_attempt_and_outcome(esp, ledger_url, tmp_path):
    contacts = contacts_file(tmp_path, 300)

    result = run_yardstick(contacts, esp, ledger_url)

    messages = esp.messages()
    outcomes = assert_run_invariants(messages, expected_contacts(contacts), max_attempts=yardstick.MAX_ATTEMPTS)
    assert result["contacts"] == sum(outcomes.values()) == 300
    assert result["messages"] == len(messages) > 300  # 10% blocked: resent
    assert result["outcomes"] == {"failed" if status == "blocked" else status: n for status, n in outcomes.items()}
    assert attempt_rows(ledger_url) == logged_attempts(messages)  # every attempt, its id and its final outcome


def test_blocked_contacts_are_resent_as_new_attempts_up_to_the_limit(start_esp, tmp_path):
    esp = start_esp(hold_rate=0, delivered_rate=0, bounced_rate=0, blocked_rate=1)
    ledger_url = f"sqlite:///{tmp_path / 'yardstick.db'}"

    result = run_yardstick(contacts_file(tmp_path, 20), esp, ledger_url)

    messages = esp.messages()
    assert result["outcomes"] == {"failed": 20}
    assert result["messages"] == len(messages) == 20 * yardstick.MAX_ATTEMPTS
    assert attempt_rows(ledger_url) == logged_attempts(messages)
    assert {attempt for _, attempt in logged_attempts(messages)} == {1, 2, 3, 4, 5}


def test_recording_nothing_it_does_the_same_job_and_keeps_only_its_claim(esp, tmp_path):
    contacts = contacts_file(tmp_path, 300)
    ledger_url = f"sqlite:///{tmp_path / 'baseline.db'}"

    result = run_yardstick(contacts, esp, ledger_url, "--records-nothing")

    outcomes = assert_run_invariants(esp.messages(), expected_contacts(contacts), yardstick.MAX_ATTEMPTS)
    assert result["contacts"] == sum(outcomes.values()) == 300
    assert attempt_rows(ledger_url) == {}
    engine = create_engine(ledger_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM yardstick_contacts")).scalar_one() == 300
    engine.dispose()


def ledger_rows(ledger_url) -> tuple[dict, dict, int]:
    """--ledger-schema: (email, attempt) -> (message id, status) from send_attempts, each row's key checked;
    email -> (status, attempts, claim_attempts) from sent_contacts; and how many staged rows are left."""
    engine = create_engine(ledger_url)
    with engine.connect() as conn:
        attempts = conn.execute(
            text("SELECT email, attempt, provider_message_id, status, idempotency_key, run_id FROM send_attempts")
        ).all()
        contacts = conn.execute(text("SELECT email, status, attempts, claim_attempts FROM sent_contacts")).all()
        staged = conn.execute(text("SELECT count(*) FROM staged_contacts")).scalar_one()
    engine.dispose()
    for email, attempt, _, _, key, run_id in attempts:
        assert (key, run_id) == (idempotency_key(email, attempt), yardstick.LEDGER_RUN)
    return (
        {(email, attempt): (message_id, status) for email, attempt, message_id, status, _, _ in attempts},
        {email: (status, tried, claimed) for email, status, tried, claimed in contacts},
        staged,
    )


def latest_attempts(messages: list[dict]) -> dict[str, tuple[int, str]]:
    """email -> (its last attempt's number, that attempt's outcome), from the mock's log."""
    latest: dict[str, tuple[int, str]] = {}
    for (email, attempt), (_, status) in logged_attempts(messages).items():
        latest[email] = max(latest.get(email, (0, "")), (attempt, status))
    return latest


# A contact's state in the ledger after its last attempt's outcome (rules.py): blocked on the last allowed
# attempt is failed; refused by the provider is closed as bounced.
LEDGER_STATE = {"delivered": "delivered", "bounced": "bounced", "complained": "complained", "blocked": "blocked"}


def expected_state(attempt: int, outcome: str) -> str:
    return "failed" if outcome == "blocked" and attempt == yardstick.MAX_ATTEMPTS else LEDGER_STATE[outcome]


def test_on_the_ledger_schema_it_does_the_same_job_and_writes_the_rows_the_ledger_writes(esp, ledger_url, tmp_path):
    """--ledger-schema: the package's own tables, made by its migrations, written as the ledger writes them:
    every attempt with its key, message id and outcome; every contact with its state and attempt count;
    nothing left staged; and the package's own summary of the run reads them as the run was."""
    contacts = contacts_file(tmp_path, 300)

    result = run_yardstick(contacts, esp, ledger_url, "--ledger-schema")

    messages = esp.messages()
    outcomes = assert_run_invariants(messages, expected_contacts(contacts), max_attempts=yardstick.MAX_ATTEMPTS)
    assert result["contacts"] == sum(outcomes.values()) == 300
    assert result["messages"] == len(messages) > 300  # 10% blocked: resent
    assert result["tables"] == "the ledger's"
    attempts, contact_rows, staged = ledger_rows(ledger_url)
    assert attempts == logged_attempts(messages)
    expected = {
        email: (expected_state(attempt, status), attempt, attempt)
        for email, (attempt, status) in latest_attempts(messages).items()
    }
    assert contact_rows == expected
    assert staged == 0
    engine = connect(ledger_url)
    summary = Ledger(engine).run_summary(yardstick.LEDGER_RUN)
    engine.dispose()
    assert summary["by_status"] == Counter(state for state, _, _ in expected.values())
    assert summary["messages_sent"] == len(messages)


def test_on_the_ledger_schema_a_contact_blocked_every_time_ends_failed_after_the_limit(start_esp, ledger_url, tmp_path):
    esp = start_esp(hold_rate=0, delivered_rate=0, bounced_rate=0, blocked_rate=1)

    result = run_yardstick(contacts_file(tmp_path, 20), esp, ledger_url, "--ledger-schema")

    assert result["outcomes"] == {"failed": 20}
    attempts, contact_rows, _ = ledger_rows(ledger_url)
    assert attempts == logged_attempts(esp.messages())
    assert {status for _, status in attempts.values()} == {"blocked"}
    assert set(contact_rows.values()) == {("failed", yardstick.MAX_ATTEMPTS, yardstick.MAX_ATTEMPTS)}


def test_a_refused_message_closes_its_contact_as_bounced_as_the_ledger_does():
    assert yardstick.split_recorded([("a@example.com", 2, None, "rejected")], "now") == (
        [],
        [("refused", "now", "a@example.com", 2)],
        [("bounced", "now", "a@example.com")],
    )


def test_contacts_written_once_leaves_each_contact_as_its_claim_wrote_it(start_esp, ledger_url, tmp_path):
    """--contacts-written-once: what the ledger would write if a contact's state were read from its attempts."""
    esp = start_esp(hold_rate=0, delivered_rate=0.4, bounced_rate=0.1, blocked_rate=0.5)
    contacts = contacts_file(tmp_path, 100)

    result = run_yardstick(contacts, esp, ledger_url, "--ledger-schema", "--contacts-written-once")

    messages = esp.messages()
    assert_run_invariants(messages, expected_contacts(contacts), yardstick.MAX_ATTEMPTS)
    assert result["messages"] == len(messages) > 100
    attempts, contact_rows, _ = ledger_rows(ledger_url)
    assert attempts == logged_attempts(messages)
    assert set(contact_rows.values()) == {("sending", 1, 1)}


def test_contacts_written_once_needs_the_ledger_schema(esp, tmp_path):
    command = [sys.executable, "-m", "include.bench.yardstick", str(contacts_file(tmp_path, 10)), "--esp-url", esp.url]
    completed = subprocess.run(
        [*command, "--api-key", API_KEY, "--contacts-written-once"], cwd=PROJECT_ROOT, capture_output=True, text=True
    )
    assert completed.returncode == 2
    assert "--contacts-written-once needs --ledger-schema" in completed.stderr


# Each way of writing: its table of attempts, the state an attempt has from its commit until its reply, and
# yardstick.run's options.
ATTEMPTS_BEFORE_REPLY = {
    "its own": ("yardstick_attempts", "sending", {}),
    "the ledger's": ("send_attempts", "pending", {"ledger_schema": True}),
    "the ledger's, contacts written once": (
        "send_attempts", "pending", {"ledger_schema": True, "contact_updates": False}
    ),
}  # fmt: skip


@pytest.mark.parametrize("tables", ATTEMPTS_BEFORE_REPLY)
@pytest.mark.parametrize("ledger", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_every_attempt_is_committed_before_the_provider_sees_it(esp, ledger, tables, tmp_path, request):
    """Each batch, as it leaves for the provider, is read back from the database over another connection:
    only what was committed can be seen there."""
    ledger_url = f"sqlite:///{tmp_path / 'y.db'}" if ledger == "sqlite" else request.getfixturevalue("postgres_url")
    table, before_reply, options = ATTEMPTS_BEFORE_REPLY[tables]
    checked = []
    reader = create_engine(ledger_url)

    async def committed_before_sending(outgoing) -> None:
        if outgoing.url.path != "/v1/messages/batch":
            return
        batch = json.loads(outgoing.content)["messages"]
        with reader.connect() as conn:
            rows = conn.execute(text(f"SELECT email, attempt, status FROM {table}")).all()
        committed = {(email, attempt): status for email, attempt, status in rows}
        for message in batch:
            attempt = int(message["idempotency_key"].rsplit("-", 1)[1])
            assert committed.get((message["to"], attempt)) == before_reply, (message["to"], attempt)
        checked.extend(batch)

    client = yardstick.provider_client(esp.url, API_KEY, event_hooks={"request": [committed_before_sending]})
    contacts = contacts_file(tmp_path, 300)
    try:
        result = asyncio.run(yardstick.run(contacts, ledger_url, client, tmp_path, False, **options))
    finally:
        reader.dispose()

    assert len(checked) == result["messages"] == len(esp.messages()) > 300
