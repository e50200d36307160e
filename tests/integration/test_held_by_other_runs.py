"""Contacts held by another live run are not "already contacted": the claim counts them apart, with the
latest lease expiry among their runs, and the report says so (on SQLite and Postgres)."""

from __future__ import annotations

from datetime import timedelta

from tests.support.ledger import contacts, send_everything, stage_and_claim
from welcome_mailer.ledger import ledger_runs
from welcome_mailer.pipeline import claim_contacts
from welcome_mailer.report import build_report, render_markdown
from welcome_mailer.vocabulary import utcnow

PARSED = {"csv_path": "f.csv", "rejected_csv": "r.csv", "encoding": "utf-8", "encoding_warning": None}
SUMMARY = {"by_status": {}, "attempts_histogram": {}, "messages_sent": 0, "resent_after_block": 0}


def report_for(claimed: dict) -> str:
    parsed = {**PARSED, "rows_read": 3, "rejected": 0, "duplicates_in_file": 0, "contacts": claimed["staged"]}
    return render_markdown(build_report(run_id="run-3", parsed=parsed, claimed=claimed, summary=SUMMARY, phases={}))


def test_held_contacts_are_counted_apart_from_contacted_ones(ledger):
    done = stage_and_claim(ledger, "run-1", ["a@example.com"])
    send_everything(ledger, "run-1", done.batches, "delivered")
    ledger.finish_run("run-1")
    stage_and_claim(ledger, "run-2", ["b@example.com", "c@example.com"])  # in flight, lease alive
    with ledger.engine.connect() as conn:
        lease = conn.execute(ledger_runs.select().where(ledger_runs.c.run_id == "run-2")).one().lease_expires_at

    ledger.renew_lease("run-3")
    ledger.stage("run-3", contacts("a@example.com", "b@example.com", "c@example.com"))
    claimed = claim_contacts(ledger, "run-3", 500, 8)
    assert (claimed["owned"], claimed["skipped"], claimed["held_by_other_runs"]) == (0, 3, 2)
    assert timedelta(minutes=29) < lease - utcnow() < timedelta(minutes=31)
    assert claimed["held_until"] == lease.isoformat()
    report = report_for(claimed)
    assert "| already contacted (skipped) | 1 |" in report
    assert "| held by another run in progress (skipped) | 2 |" in report
    assert f"| {lease.isoformat()} |" in report
    nothing_sent = report.split("Nothing was sent", 1)[1]
    assert "1 contact(s) in the file were already contacted" in nothing_sent
    assert "2 are held by another run still in progress, NOT contacted yet" in nothing_sent

    # Once that run is over (finished, or its process known dead), its contacts are taken over at once.
    ledger.finish_run("run-2")
    again = claim_contacts(ledger, "run-3", 500, 8)
    assert (again["owned"], again["taken_over"], again["held_by_other_runs"], again["held_until"]) == (2, 2, 0, None)
    assert "held by another run" not in report_for({**again, "owned": 0}).split("Nothing was sent", 1)[1]


def test_a_file_without_a_valid_contact_says_so_not_that_everybody_was_contacted(ledger):
    ledger.renew_lease("run-4")
    claimed = claim_contacts(ledger, "run-4", 500, 8)  # parse staged nothing: every row was rejected
    parsed = {**PARSED, "rows_read": 4, "rejected": 4, "duplicates_in_file": 0, "contacts": claimed["staged"]}
    report = render_markdown(build_report(run_id="run-4", parsed=parsed, claimed=claimed, summary=SUMMARY, phases={}))
    nothing_sent = report.split("Nothing was sent", 1)[1]
    assert "the file held no valid contact (4 row(s) read, 4 rejected: see r.csv" in nothing_sent
    assert "already contacted" not in nothing_sent
