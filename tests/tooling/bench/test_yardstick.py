"""The bench's yardstick (include/bench/yardstick.py): every end-to-end figure is a ratio to it, so it must do
the package's whole job, durably. It is held to the run invariants, proven from the mock ESP's own log; its
tables tell the same story; and every attempt is committed before the provider sees it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest
from sqlalchemy import create_engine, text

from include.bench import yardstick
from tests.support import PROJECT_ROOT
from tests.support.esp import API_KEY
from tests.support.invariants import assert_run_invariants, expected_contacts
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


@pytest.mark.parametrize("ledger", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_every_attempt_is_committed_before_the_provider_sees_it(esp, ledger, tmp_path, request):
    """Each batch, as it leaves for the provider, is read back from the database over another connection:
    only what was committed can be seen there."""
    ledger_url = f"sqlite:///{tmp_path / 'y.db'}" if ledger == "sqlite" else request.getfixturevalue("postgres_url")
    checked = []
    reader = create_engine(ledger_url)

    async def committed_before_sending(outgoing) -> None:
        if outgoing.url.path != "/v1/messages/batch":
            return
        batch = json.loads(outgoing.content)["messages"]
        with reader.connect() as conn:
            rows = conn.execute(text("SELECT email, attempt, status FROM yardstick_attempts")).all()
        committed = {(email, attempt): status for email, attempt, status in rows}
        for message in batch:
            attempt = int(message["idempotency_key"].rsplit("-", 1)[1])
            assert committed.get((message["to"], attempt)) == "sending", (message["to"], attempt)
        checked.extend(batch)

    client = yardstick.provider_client(esp.url, API_KEY, event_hooks={"request": [committed_before_sending]})
    contacts = contacts_file(tmp_path, 300)
    try:
        result = asyncio.run(yardstick.run(contacts, ledger_url, client, tmp_path, records_nothing=False))
    finally:
        reader.dispose()

    assert len(checked) == result["messages"] == len(esp.messages()) > 300
