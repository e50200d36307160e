"""Operator actions and questions (welcome_mailer.operator_actions) on a real ledger (SQLite and Postgres) after
whole runs against the real mock ESP: lookup, suppress, import a suppression list, erase (GDPR), release.
What a later run sends is proven from the ESP's own message log."""

from __future__ import annotations

import shutil
from datetime import timedelta

import pytest
from sqlalchemy import create_engine, select, text

from tests.support.invariants import messages_by_recipient
from tests.support.runs import whole_run, write_contacts
from welcome_mailer import operator_actions, pipeline
from welcome_mailer.ledger import EraseKeyMissing, Ledger, sent_contacts

KEY = b"test-erase-key"
ACTOR = "tester"


@pytest.fixture
def keyed(ledger):
    return Ledger(ledger.engine, erase_key=KEY)


@pytest.fixture
def reports(tmp_path):
    return tmp_path / "reports"


def table_texts(ledger_url) -> str:
    """Every row of every table of the ledger, as one lower-cased text."""
    engine = create_engine(ledger_url)
    parts = []
    with engine.connect() as conn:
        for table in ("sent_contacts", "send_attempts", "staged_contacts", "outcome_inbox", "operator_actions"):
            parts.extend(repr(tuple(row)) for row in conn.execute(text(f"SELECT * FROM {table}")))
    engine.dispose()
    return "\n".join(parts).lower()


def test_lookup_shows_state_source_line_and_every_attempt(keyed, start_esp, tmp_path, reports):
    esp = start_esp(hold_rate=0, seed=3, blocked_rate=0.5, delivered_rate=0.5, bounced_rate=0)
    path = write_contacts(tmp_path / "in.csv", [(f"Person {i}", f"p{i}@example.com") for i in range(30)])
    whole_run(keyed, esp, "run-1", path, reports)
    by_recipient = messages_by_recipient(esp.messages())
    email = max(by_recipient, key=lambda e: len(by_recipient[e]))  # someone who was blocked at least once
    view = operator_actions.lookup(keyed, f"  {email.upper()} ")
    assert view.email == email and view.run_id == "run-1"
    assert view.name == f"Person {int(email[1:].split('@')[0])}"
    assert (view.source_file, view.source_line) == (str(path), int(email[1:].split("@")[0]) + 1)
    shown = operator_actions.lookup(keyed, email, data_roots=[tmp_path / "elsewhere", tmp_path])
    assert shown.source_file == "in.csv", "as the form's csv_path: relative to its data root"
    shutil.rmtree(reports)  # the file is the ledger's record, not read back from the run's report
    assert operator_actions.lookup(keyed, email).source_file == str(path)
    [run] = operator_actions.overview(keyed, reports, data_roots=[tmp_path])["runs"]
    assert run["file"] == "in.csv"
    sent = by_recipient[email]
    assert [a["provider_message_id"] for a in view.history] == [m["id"] for m in sent]
    assert [a["idempotency_key"] for a in view.history] == [m["idempotency_key"] for m in sent]
    assert [a["status"] for a in view.history] == [m["status"] for m in sent]
    assert view.status == ("failed" if sent[-1]["status"] == "blocked" else sent[-1]["status"])
    assert operator_actions.lookup(keyed, "nobody@example.com").status is None
    with pytest.raises(operator_actions.InvalidEmail):
        operator_actions.lookup(keyed, "not an address")


def test_suppressed_and_imported_addresses_are_never_emailed_and_audited(keyed, start_esp, tmp_path, reports):
    esp = start_esp(hold_rate=0, seed=5)
    rows = [(f"P {i}", f"s{i}@example.com") for i in range(20)]
    first = write_contacts(tmp_path / "first.csv", rows[:10])
    whole_run(keyed, esp, "run-1", first, reports)
    counts = operator_actions.suppress(keyed, ["S1@Example.com", "s15@example.com", "bad"], ACTOR, "asked by phone")
    assert counts == {"suppressed": 2, "already": 0, "erased": 0, "invalid": 1}
    listing = tmp_path / "unsubscribes.csv"
    listing.write_text("Email,Date\ns16@example.com,2026-11-01\n S17@EXAMPLE.COM ,2026-11-02\n\ns1@example.com,x\n")
    with listing.open() as handle:
        counts = operator_actions.import_suppressions(keyed, handle, ACTOR, "CRM unsubscribes", source=str(listing))
    assert counts == {"suppressed": 2, "already": 1, "erased": 0, "invalid": 0}
    view = operator_actions.lookup(keyed, "s16@example.com")
    assert view.status == "suppressed"
    assert [(a["action"], a["actor"], a["reason"], a["detail"]) for a in view.actions] == [
        ("suppress", ACTOR, "CRM unsubscribes", f"imported from {listing}")
    ]
    before = len(esp.messages())
    whole_run(keyed, esp, "run-2", write_contacts(tmp_path / "second.csv", rows), reports)
    later = messages_by_recipient(esp.messages()[before:])
    assert set(later) == {f"s{i}@example.com" for i in range(10, 20)} - {f"s{i}@example.com" for i in (15, 16, 17)}
    assert operator_actions.lookup(keyed, "s15@example.com").status == "suppressed"


def test_release_makes_a_failed_contact_due_at_once(keyed, start_esp, tmp_path, reports):
    esp = start_esp(hold_rate=0, seed=7, blocked_rate=1, delivered_rate=0, bounced_rate=0)
    path = write_contacts(tmp_path / "in.csv", [("Jane", "jane@example.com"), ("Joe", "joe@example.com")])
    whole_run(keyed, esp, "run-1", path, reports)
    assert operator_actions.lookup(keyed, "jane@example.com").status == "failed"
    assert operator_actions.release(keyed, "JANE@example.com", ACTOR, "the block was lifted") is True
    assert operator_actions.release(keyed, "nobody@example.com", ACTOR, "x") is False
    with pytest.raises(ValueError, match="say why"):
        operator_actions.release(keyed, "joe@example.com", ACTOR, " ")
    before = len(esp.messages())
    # A run that retries failed contacts only after 24 h still takes the released one at once.
    keyed.renew_lease("run-2")
    pipeline.parse_file(keyed, "run-2", path, tmp_path / "rejected-2.csv")
    claimed = keyed.claim("run-2", 50, 1024, retry_failed_after=timedelta(hours=24))
    assert (claimed.owned, claimed.failed_recently) == (1, 1)
    assert esp.messages()[before:] == []
    view = operator_actions.lookup(keyed, "jane@example.com")
    assert view.run_id == "run-2" and view.actions[0]["action"] == "release"


def test_erase_leaves_no_trace_and_the_address_is_never_emailed_again(keyed, ledger_url, start_esp, tmp_path, reports):
    esp = start_esp(hold_rate=0, seed=9)
    rows = [("Jane Roe", "jane@example.com"), ("Joe", "joe@example.com")]
    path = write_contacts(tmp_path / "in.csv", rows)
    with path.open("a") as handle:  # a rejected row that holds the address (a bad name field is not enough)
        handle.write("Jane Again, jane@example.com, 555, extra\n")
        handle.write("Broken, jane@example.com@, 555\n")
    (tmp_path / "dropzone" / "archive").mkdir(parents=True)
    (tmp_path / "dropzone" / "archive" / "old.csv").write_text(
        "Jane Roe, JANE@example.com, 555\nJoe, joe@example.com\n"
    )
    whole_run(keyed, esp, "run-1", path, reports)
    operator_actions.suppress(keyed, ["jane@example.com"], ACTOR, "asked first to stop")
    assert "jane@example.com" in table_texts(ledger_url)
    removed = operator_actions.erase(
        keyed, "Jane@Example.com", ACTOR, "GDPR request #12", [reports, tmp_path / "dropzone" / "archive"]
    )
    assert removed["sent_contacts"] == 1 and removed["send_attempts"] >= 1 and removed["file lines"] >= 2
    assert "jane" not in table_texts(ledger_url)
    for file in [*reports.rglob("*"), *(tmp_path / "dropzone").rglob("*")]:
        if file.is_file():
            assert "jane@example.com" not in file.read_text().lower(), file
    assert "joe@example.com" in (tmp_path / "dropzone" / "archive" / "old.csv").read_text()
    view = operator_actions.lookup(keyed, "jane@example.com")
    assert view.status is None and view.erased_at is not None
    assert [a["action"] for a in view.actions] == ["erase", "suppress"] and all(
        a["email"] is None for a in view.actions
    )
    assert operator_actions.suppress(keyed, ["jane@example.com"], ACTOR, "again")["erased"] == 1
    assert "jane" not in table_texts(ledger_url), "suppressing an erased address does not write it back"

    before = len(esp.messages())
    report = whole_run(keyed, esp, "run-2", path, reports)
    assert esp.messages()[before:] == [], "nobody new in the file: the erased address is not new"
    assert report["already_contacted_skipped"] == 2
    assert "jane" not in table_texts(ledger_url)

    with pytest.raises(EraseKeyMissing):  # without the key, claim refuses rather than risk an email
        Ledger(keyed.engine).claim("run-3", 50, 1024)
    with pytest.raises(EraseKeyMissing):
        operator_actions.erase(Ledger(keyed.engine), "joe@example.com", ACTOR, "x", [])


def test_claim_without_erased_contacts_needs_no_key(ledger, tmp_path):
    path = write_contacts(tmp_path / "in.csv", [("A", "a@example.com")])
    ledger.renew_lease("run")
    pipeline.parse_file(ledger, "run", path, tmp_path / "rejected.csv")
    assert ledger.claim("run", 50, 1024).owned == 1
    with ledger.engine.connect() as conn:
        assert conn.execute(select(sent_contacts.c.source_line)).scalar() == 1


def test_a_run_s_outcomes_stream_as_csv(keyed, start_esp, tmp_path, reports):
    esp = start_esp(hold_rate=0, seed=13)
    path = write_contacts(tmp_path / "in.csv", [(f"P {i}", f"c{i}@example.com") for i in range(120)])
    whole_run(keyed, esp, "run-1", path, reports)
    pieces = list(operator_actions.run_outcomes_csv(keyed, "run-1"))
    lines = "".join(pieces).splitlines()
    assert lines[0] == "email,name,status,attempts,provider_message_id,source_line,updated_at"
    assert len(lines) == 121 and len(pieces) >= 2
    view = operator_actions.run_view(reports, "run-1")
    assert view["report"]["claimed"] == 120 and view["rejected"] == []
