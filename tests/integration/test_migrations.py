"""The ledger's schema under Alembic: fresh ledgers, ledgers made before Alembic (stamped, data kept),
tasks that refuse a ledger not at head, and migrations that match the code's tables. On SQLite and
Postgres."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from welcome_mailer.ledger import Ledger, connect
from welcome_mailer.ledger.migrate import (
    BASELINE,
    HEAD_REVISION,
    VERSION_TABLE,
    LedgerSchemaError,
    check_at_head,
    current_revision,
    downgrade,
    revision_scripts,
    target_metadata,
    upgrade,
)

V1_ROWS = {
    "sent_contacts": "INSERT INTO sent_contacts VALUES ('old@example.com', 'Old', 'sent', 1, 1, 'v1-run', 0, "
    "'m-old', '2026-11-01 10:00:00', '2026-11-01 10:00:00')",
    "send_attempts": "INSERT INTO send_attempts VALUES ('old@example.com', 1, 'welcome-x-1', 'v1-run', 'sent', "
    "'m-old', NULL, '2026-11-01 10:00:00', '2026-11-01 10:00:00')",
    "ledger_runs": "INSERT INTO ledger_runs VALUES ('v1-run', '2026-11-01 10:30:00', NULL, '2026-11-01 10:00:00')",
    "processed_files": "INSERT INTO processed_files VALUES ('ab12', 'old.csv', 'done', 'v1-run', "
    "'2026-11-01 10:00:00')",
}


@pytest.fixture
def engine(ledger_url):
    engine = connect(ledger_url)
    yield engine
    engine.dispose()


def make_v1_ledger(engine) -> None:
    """A ledger as the code before Alembic left it: its tables and ledger_schema = 1, no Alembic table."""
    upgrade(engine, BASELINE)
    with engine.begin() as conn:
        conn.execute(text(f"DROP TABLE {VERSION_TABLE}"))
        for statement in V1_ROWS.values():
            conn.execute(text(statement))


def test_the_code_names_the_newest_revision_script_as_its_head():
    """HEAD_REVISION (what tasks check for without loading Alembic) is Alembic's own head: a new
    revision script must raise it."""
    assert revision_scripts().get_current_head() == HEAD_REVISION


def test_checking_a_ledger_at_head_loads_nothing_of_alembic(ledger_url, tmp_path):
    """Every task checks the ledger's revision, and `make run` migrates before each run: at head, both are
    one query. Run in a fresh interpreter, where nothing imported Alembic yet."""
    import subprocess
    import sys

    engine = connect(ledger_url)
    upgrade(engine)
    engine.dispose()
    script = (
        "import sys\n"
        "from welcome_mailer.ledger import connect\n"
        "from welcome_mailer.ledger.migrate import check_at_head, upgrade\n"
        f"engine = connect({str(ledger_url)!r})\n"
        "check_at_head(engine)\n"
        "print(upgrade(engine), sorted(m for m in sys.modules if m.split('.')[0] == 'alembic'))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"('{HEAD_REVISION}', '{HEAD_REVISION}') []"


def test_a_version_table_naming_two_revisions_is_refused(engine):
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text(f"INSERT INTO {VERSION_TABLE} (version_num) VALUES ('0003')"))
    with pytest.raises(LedgerSchemaError, match="several revisions"):
        check_at_head(engine)


def test_a_fresh_ledger_is_created_at_head(engine):
    assert upgrade(engine) == (None, HEAD_REVISION)
    check_at_head(engine)
    assert "ledger_schema" not in inspect(engine).get_table_names()


def test_a_ledger_made_before_alembic_is_stamped_and_upgraded_with_its_data(engine):
    make_v1_ledger(engine)
    assert current_revision(engine) is None
    assert upgrade(engine) == (None, HEAD_REVISION)
    with engine.connect() as conn:
        for table in V1_ROWS:
            assert conn.execute(text(f"SELECT count(*) FROM {table}")).scalar() == 1, table
    assert "ledger_schema" not in inspect(engine).get_table_names()
    ledger = Ledger(engine)
    assert [m.message_id for m in list(ledger.pending_messages("v1-run"))] == ["m-old"], (
        "v1's messages are still polled"
    )


def test_tasks_refuse_a_ledger_not_at_head_and_say_what_to_run(engine):
    with pytest.raises(LedgerSchemaError, match=r"has no welcome-mailer schema yet.*welcome-mailer db migrate"):
        check_at_head(engine)
    upgrade(engine, BASELINE)
    with pytest.raises(LedgerSchemaError, match=f"is at revision {BASELINE}, this code needs revision"):
        check_at_head(engine)


def test_the_migrations_build_exactly_the_tables_the_code_uses(engine):
    upgrade(engine)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        assert compare_metadata(context, target_metadata()) == []


def test_events_matched_by_message_id_find_it_through_an_index(engine):
    upgrade(engine)
    indexes = {ix["name"]: ix["column_names"] for ix in inspect(engine).get_indexes("send_attempts")}
    assert indexes["ix_send_attempts_provider_message_id"] == ["provider_message_id"]


def test_a_ledger_with_data_at_0002_is_upgraded_and_takes_the_new_states(engine):
    from tests.support.ledger import statuses
    from welcome_mailer.vocabulary import OutcomeEvent

    make_v1_ledger(engine)
    upgrade(engine, "0002")
    upgrade(engine)
    assert current_revision(engine) == HEAD_REVISION
    with engine.connect() as conn:
        for table in V1_ROWS:
            assert conn.execute(text(f"SELECT count(*) FROM {table}")).scalar() == 1, table
        assert conn.execute(text("SELECT count(*) FROM provider_events")).scalar() == 0
    ledger = Ledger(engine)
    assert ledger.record_outcomes([OutcomeEvent("complained", provider_message_id="m-old")]).applied == 1
    assert statuses(ledger)["old@example.com"][0] == "complained"
    assert ledger.unsubscribe("old@example.com") is True
    assert statuses(ledger)["old@example.com"][0] == "unsubscribed"


def test_0004_keeps_the_data_and_the_ledger_works_after_it(engine, tmp_path):
    """Operator actions (0004) on a ledger at 0002 with contacts: rows kept, source line unknown, the new
    tables and indexes there, and the kept contacts can be looked up, suppressed and erased."""
    from welcome_mailer import operator_actions

    upgrade(engine, "0002")
    with engine.begin() as conn:
        for table in ("sent_contacts", "send_attempts", "ledger_runs"):
            conn.execute(text(V1_ROWS[table]))
    assert upgrade(engine) == ("0002", HEAD_REVISION)
    check_at_head(engine)
    ledger = Ledger(engine, erase_key=b"k")
    view = operator_actions.lookup(ledger, "OLD@example.com")
    assert (view.status, view.source_line, [a["provider_message_id"] for a in view.history]) == (
        "sent",
        None,
        ["m-old"],
    )
    indexes = {ix["name"] for ix in inspect(engine).get_indexes("sent_contacts")}
    assert "ix_sent_contacts_status_updated" in indexes  # 0012's; it replaced ix_sent_contacts_status
    operator_actions.suppress(ledger, ["old@example.com"], "t", "why")
    assert operator_actions.erase(ledger, "old@example.com", "t", "gdpr", [])["sent_contacts"] == 1


def test_0005_one_run_index_serves_a_run_in_flight_across_the_upgrade(engine):
    """0005 replaces the run's (run_id, status) and (run_id, batch_no) indexes by one on (run_id, status,
    batch_no): a run claimed at 0004 is sent, polled and resent at head, and 0004 comes back on downgrade."""
    from datetime import timedelta

    from tests.support.ledger import stage_and_claim
    from welcome_mailer.ledger import AcceptedAttempt
    from welcome_mailer.vocabulary import OutcomeEvent, utcnow

    upgrade(engine, "0004")
    ledger = Ledger(engine)
    claimed = stage_and_claim(ledger, "run-1", ["a@example.com", "b@example.com", "c@example.com"], batch_size=2)
    assert upgrade(engine) == ("0004", HEAD_REVISION)
    indexes = {ix["name"]: ix["column_names"] for ix in inspect(engine).get_indexes("sent_contacts")}
    assert indexes["ix_sent_contacts_run_status_batch"] == ["run_id", "status", "batch_no"]
    assert not {"ix_sent_contacts_run_status", "ix_sent_contacts_run_batch"} & set(indexes)
    for batch in claimed.batches:
        attempts = ledger.start_attempts("run-1", batch)
        ledger.record_sent("run-1", [AcceptedAttempt(a.email, a.attempt, f"m-{a.email}") for a in attempts])
    assert sorted(m.email for m in ledger.pending_messages("run-1")) == [
        "a@example.com",
        "b@example.com",
        "c@example.com",
    ]
    ledger.record_outcomes([OutcomeEvent("blocked", provider_message_id="m-a@example.com")])
    # numbered after batches 0 and 1, whose b and c still wait for their outcome
    assert ledger.requeue_blocked("run-1", 3, utcnow() + timedelta(minutes=1), 2, 8) == [2]
    assert [a.attempt for a in ledger.start_attempts("run-1", 2)] == [2]
    assert downgrade(engine, "0004") == (HEAD_REVISION, "0004")
    indexes = {ix["name"] for ix in inspect(engine).get_indexes("sent_contacts")}
    assert {"ix_sent_contacts_run_status", "ix_sent_contacts_run_batch"} <= indexes
    assert "ix_sent_contacts_run_status_batch" not in indexes


def test_0006_a_run_sent_at_0005_waits_for_its_outcomes_at_head_and_comes_back_on_downgrade(engine):
    """0006: a contact's row no longer records the provider's acceptance (its latest attempt does). A run
    sent at 0005 (one contact accepted, one still pending) upgrades: the accepted one waits for its
    outcome (shown as sent), the pending one is still owed its send; on downgrade both read as 0005 wrote
    them (sent with its message id; sending). Rows two fixed bugs of 0005's code could leave are
    reconciled: a sent contact whose attempt was never recorded (under a dead run), or already settled."""
    from tests.support.ledger import stage_and_claim, statuses
    from welcome_mailer.ledger import AcceptedAttempt
    from welcome_mailer.vocabulary import OutcomeEvent

    upgrade(engine, "0005")
    ledger = Ledger(engine)
    emails = ["a@example.com", "b@example.com", "c@example.com", "d@example.com"]
    [batch] = stage_and_claim(ledger, "run-1", emails).batches
    as_0005_left_them = {  # contact state, its latest attempt's state and run; b@ not recorded yet
        "a": ("sent", "sent", "run-1"),
        "c": ("sent", "pending", "dead-run"),  # a dead run's late reply settled the contact alone
        "d": ("sent", "delivered", "run-1"),  # an outcome found the attempt settled, not the contact
    }
    with engine.begin() as conn:
        for name, (contact, attempt, attempt_run) in as_0005_left_them.items():
            message_id = None if attempt == "pending" else f"m-{name}"
            where = {"e": f"{name}@example.com"}
            conn.execute(
                text("UPDATE send_attempts SET status = :s, run_id = :r, provider_message_id = :m WHERE email = :e"),
                {"s": attempt, "r": attempt_run, "m": message_id, **where},
            )
            conn.execute(
                text("UPDATE sent_contacts SET status = :s, provider_message_id = :m WHERE email = :e"),
                {"s": contact, "m": f"m-{name}", **where},
            )
    assert upgrade(engine) == ("0005", HEAD_REVISION)
    check_at_head(engine)
    assert {e: s for e, (s, _, _) in statuses(ledger).items()} == {
        "a@example.com": "sent",
        "b@example.com": "sending",
        "c@example.com": "sent",
        "d@example.com": "delivered",
    }
    assert sorted((m.email, m.message_id) for m in ledger.pending_messages("run-1")) == [
        ("a@example.com", "m-a"),
        ("c@example.com", "m-c"),
    ]
    assert ledger.count_awaiting_outcome("run-1") == 2
    assert [a.email for a in ledger.start_attempts("run-1", batch)] == ["b@example.com"], "only the unsent"
    indexes = {ix["name"]: ix["column_names"] for ix in inspect(engine).get_indexes("send_attempts")}
    assert "ix_send_attempts_run_status" not in indexes, "0007 replaces it by indexes without status"
    assert "provider_message_id" not in {c["name"] for c in inspect(engine).get_columns("sent_contacts")}
    ledger.record_sent("run-1", [AcceptedAttempt("b@example.com", 1, "m-b")])
    ledger.record_outcomes([OutcomeEvent("delivered", provider_message_id=m) for m in ("m-a", "m-c")])
    assert downgrade(engine, "0005") == (HEAD_REVISION, "0005")
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT email, status, provider_message_id FROM sent_contacts ORDER BY email")).all()
    assert [tuple(r) for r in rows] == [
        ("a@example.com", "delivered", "m-a"),
        ("b@example.com", "sent", "m-b"),
        ("c@example.com", "delivered", "m-c"),
        ("d@example.com", "delivered", "m-d"),
    ]
    assert "ix_send_attempts_run" in {ix["name"] for ix in inspect(engine).get_indexes("send_attempts")}


def test_the_command_line_downgrades_to_an_earlier_revision_and_refuses_what_is_not_one(ledger_url, capsys):
    """`welcome-mailer db downgrade --to REVISION`: a rollback to an older release's schema, and back;
    a missing, unknown or later revision changes nothing and exits 2 with what to give instead."""
    from welcome_mailer.cli import main

    def cli(*args: str) -> int:
        return main(["db", *args, "--url", ledger_url])

    engine = connect(ledger_url)
    try:
        assert cli("migrate") == 0
        assert cli("downgrade", "--to", "0004") == 0
        assert f"downgraded from {HEAD_REVISION} to 0004" in capsys.readouterr().out
        assert current_revision(engine) == "0004"
        assert cli("check") == 1, "tasks would refuse it until it is migrated again"
        for refused, why in (
            ((), "needs --to REVISION"),
            (("--to", "0042"), "no ledger revision '0042': the revisions are 0001, 0002"),
            (("--to", HEAD_REVISION), f"at revision 0004: {HEAD_REVISION} is not below it"),
        ):
            assert cli("downgrade", *refused) == 2
            assert why in capsys.readouterr().err
        assert current_revision(engine) == "0004", "a refused downgrade changes nothing"
        assert cli("migrate") == 0 and current_revision(engine) == HEAD_REVISION
    finally:
        engine.dispose()


def attempt_indexes(engine) -> dict[str, list[str]]:
    return {ix["name"]: ix["column_names"] for ix in inspect(engine).get_indexes("send_attempts")}


def test_0007_no_index_of_the_attempts_names_their_state_and_a_run_still_finds_what_it_owes(engine):
    """0007: an outcome changes an attempt's state only, and no index names the state (on Postgres its
    update is then heap-only: no index entry written). A run claimed and half sent at 0006 still finds
    its unsent attempts (the partial index of attempts without a message id) and its awaiting messages at
    head; the downgrade restores 0006's index."""
    from tests.support.ledger import stage_and_claim
    from welcome_mailer.ledger import AcceptedAttempt
    from welcome_mailer.vocabulary import OutcomeEvent

    upgrade(engine, "0006")
    ledger = Ledger(engine)
    [batch] = stage_and_claim(ledger, "run-1", ["a@example.com", "b@example.com", "c@example.com"]).batches
    ledger.record_sent("run-1", [AcceptedAttempt("a@example.com", 1, "m-a")])
    assert upgrade(engine) == ("0006", HEAD_REVISION)
    check_at_head(engine)
    indexes = attempt_indexes(engine)
    assert not [name for name, columns in indexes.items() if "status" in columns]
    assert indexes["ix_send_attempts_run"] == ["run_id"]
    assert indexes["ix_send_attempts_unaccepted"] == ["run_id", "provider_message_id"]  # 0014's columns
    assert ledger.count_awaiting_outcome("run-1") == 1
    assert [a.email for a in ledger.start_attempts("run-1", batch)] == ["b@example.com", "c@example.com"]
    ledger.record_sent("run-1", [AcceptedAttempt("b@example.com", 1, "m-b")])
    assert ledger.count_awaiting_outcome("run-1") == 2
    ledger.record_outcomes([OutcomeEvent("delivered", provider_message_id="m-a")])
    assert ledger.count_awaiting_outcome("run-1") == 1
    assert ledger.run_summary("run-1")["messages_sent"] == 2  # c@'s attempt is still pending: not a message
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            options = conn.execute(text("SELECT reloptions FROM pg_class WHERE relname = 'send_attempts'")).scalar()
        assert options == ["fillfactor=50"]
    assert downgrade(engine, "0006") == (HEAD_REVISION, "0006")
    indexes = attempt_indexes(engine)
    assert indexes["ix_send_attempts_run_status"] == ["run_id", "status"]
    assert {"ix_send_attempts_unaccepted", "ix_send_attempts_run"}.isdisjoint(indexes)


def test_0014_the_unaccepted_index_names_the_null_and_a_run_still_finds_what_it_owes(engine):
    """0014: ix_send_attempts_unaccepted gets the message id (always NULL in it) as a second column, so that
    SQLite's planner prefers it to ix_send_attempts_run. A run half sent at 0013 still finds its unsent
    attempts and its awaiting messages at head; the downgrade restores the index on (run_id)."""
    from tests.support.ledger import stage_and_claim
    from welcome_mailer.ledger import AcceptedAttempt

    upgrade(engine, "0013")
    ledger = Ledger(engine)
    [batch] = stage_and_claim(ledger, "run-1", ["a@example.com", "b@example.com", "c@example.com"]).batches
    ledger.record_sent("run-1", [AcceptedAttempt("a@example.com", 1, "m-a")])
    assert upgrade(engine) == ("0013", HEAD_REVISION)
    assert attempt_indexes(engine)["ix_send_attempts_unaccepted"] == ["run_id", "provider_message_id"]
    assert (ledger.count_awaiting_outcome("run-1"), ledger.count_unsent("run-1")) == (1, 2)
    assert [a.email for a in ledger.start_attempts("run-1", batch)] == ["b@example.com", "c@example.com"]
    assert downgrade(engine, "0013") == (HEAD_REVISION, "0013")
    assert attempt_indexes(engine)["ix_send_attempts_unaccepted"] == ["run_id"]


def test_0015_a_runs_guard_figures_stay_and_its_next_count_is_due_now(engine):
    """0015: run_limits gets guard_count_due_at (NULL: due now). A run's row from 0014 keeps its figures and
    its guard stop; the downgrade drops the column and keeps the rest."""
    upgrade(engine, "0014")
    ledger = Ledger(engine)
    ledger.add_limit_figures("run-1", throttled_requests=2, rate_wait_seconds=1.5)
    ledger.stop_for_guard("run-1", "bounce rate 40.0% > 20.0%", {"outcomes": 300})
    assert upgrade(engine) == ("0014", HEAD_REVISION)
    assert ledger.guard_state("run-1") == (True, None)
    figures = ledger.limit_figures("run-1")
    assert (figures["throttled_requests"], figures["rate_wait_seconds"]) == (2, 1.5) and figures["guard_stopped_at"]
    assert downgrade(engine, "0014") == (HEAD_REVISION, "0014")
    assert "guard_count_due_at" not in {c["name"] for c in inspect(engine).get_columns("run_limits")}
    with engine.connect() as conn:  # SQLite's downgrade rebuilds the table: the row is still there
        row = conn.execute(text("SELECT throttled_requests, guard_stopped_at FROM run_limits")).one()
    assert row[0] == 2 and row[1] is not None
