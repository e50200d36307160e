"""Whole runs of welcome_emails over SMTP through `airflow dags test`: esp_default of type smtp, the mock
relay, and its bounce mailbox served by Dovecot; proven from the relay's log and the ledger."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from sqlalchemy import create_engine, select

from include.tools.generate_contacts import write_file
from tests.support.dags_test import MAX_ATTEMPTS, run_welcome
from tests.support.invariants import expected_contacts
from tests.support.smtp_relay import assert_relay_log_invariants, by_recipient, imap, start_relay  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow

RELAY_FLAGS = {"delivered_rate": 0.6, "bounced_rate": 0.1, "blocked_rate": 0.3}
RELAY_FLAGS |= {"report_min_seconds": 0.2, "report_max_seconds": 1.0}


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_run_over_smtp(backend, request, migrated_airflow_home, workspace, start_relay, imap, monkeypatch):  # noqa: F811
    relay = start_relay(**RELAY_FLAGS)
    monkeypatch.setenv("AIRFLOW_CONN_BOUNCE_MAILBOX", json.dumps(imap.connection()))
    contacts_csv = write_file(workspace / "data" / "contacts.csv", rows=600, seed=5)
    if backend == "sqlite":
        path = workspace / "ledger.db"
        connection, url = {"conn_type": "sqlite", "host": str(path)}, f"sqlite:///{path}"
    else:
        url = request.getfixturevalue("postgres_url")
        database = url.rsplit("/", 1)[1]
        connection = {"conn_type": "postgres", "host": "127.0.0.1", "port": 5432, "login": "postgres"}
        connection["schema"] = database
    esp = SimpleNamespace(connection=relay.connection(settle_seconds=2))
    result = run_welcome(migrated_airflow_home, workspace, esp, connection, str(contacts_csv), batch_size=100)
    assert result.state == "success", result.output[-3000:]
    entries = relay.messages()
    expected = expected_contacts(contacts_csv)
    finals = assert_relay_log_invariants(entries, expected, MAX_ATTEMPTS)
    report = result.report
    assert report["outcomes"].get("delivered", 0) == finals["delivered"]
    assert report["outcomes"].get("bounced", 0) == finals["bounced"]
    assert report["outcomes"].get("failed", 0) == finals.get("blocked", 0)
    engine = create_engine(url)
    from welcome_mailer.ledger import sent_contacts

    with engine.connect() as conn:
        statuses = {r.email: r.status for r in conn.execute(select(sent_contacts))}
    engine.dispose()
    for address, history in by_recipient(entries).items():
        last = history[-1]["outcome"]
        assert statuses[address] == ("failed" if last == "blocked" else last)

    # The same file again: nothing is sent.
    before = len(relay.messages())
    again = run_welcome(migrated_airflow_home, workspace, esp, connection, str(contacts_csv))
    assert again.state == "success" and again.report["messages_sent"] == 0
    assert len(relay.messages()) == before
