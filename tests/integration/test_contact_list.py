"""The operator's list of contacts (welcome_mailer.contact_list) on both backends: keyset pages that visit
every contact once in order, each filter and the search, the streamed export, and the count of a run's
contacts changed since its report."""

from __future__ import annotations

import csv
import io
from datetime import date, datetime, timedelta

import pytest

from welcome_mailer import contact_list, operator_actions
from welcome_mailer.contact_list import ContactFilter
from welcome_mailer.ledger.schema import ledger_runs, sent_contacts

T0 = datetime(2026, 11, 1, 12, 0, 0)
# at rest, then in flight (a run's contacts while it runs)
STATES = ["delivered", "bounced", "failed", "suppressed", "sending", "blocked", "claimed"]


@pytest.fixture
def contacts(ledger):
    """130 contacts over two runs: state by n % 7, last change one hour apart but in pairs (ties, split by
    the address, of two states: mostly one at rest and one in flight, or two in flight), Ann_<n> at
    example.org for every tenth, Person <n> at example.com otherwise."""
    rows = []
    for n in range(130):
        domain = "example.org" if n % 10 == 0 else "example.com"
        rows.append(
            {
                "email": f"c{n:03d}@{domain}",
                "name": f"Ann_{n}" if n % 10 == 0 else f"Person {n}",
                "status": STATES[n % len(STATES)],
                "attempts": 1,
                "claim_attempts": 1,
                "run_id": "run-a" if n < 100 else "run-b",
                "batch_no": 0,
                "created_at": T0,
                "updated_at": T0 + timedelta(hours=n // 2),
                "source_line": n + 1,
            }
        )
    with ledger.engine.begin() as conn:
        conn.execute(sent_contacts.insert(), rows)
        conn.execute(
            ledger_runs.insert(),
            [
                {"run_id": r, "lease_expires_at": T0, "finished_at": T0 + timedelta(days=10), "created_at": T0}
                for r in ("run-a", "run-b")
            ],
        )
    return rows


def every_page(ledger, filters: ContactFilter, size: int = 50) -> list[list[str]]:
    pages, after = [], ""
    while True:
        found = contact_list.page(ledger, filters, after, size)
        pages.append([r["email"] for r in found.rows])
        if not found.next_after:
            return pages
        after = found.next_after


def newest_first(rows) -> list[str]:
    return [r["email"] for r in sorted(rows, key=lambda r: (r["updated_at"], r["email"]), reverse=True)]


def test_keyset_pages_visit_every_contact_once_in_order_of_last_change(ledger, contacts):
    pages = every_page(ledger, ContactFilter())
    assert [len(p) for p in pages] == [50, 50, 30]
    assert [e for p in pages for e in p] == newest_first(contacts), "ties in updated_at are split by the address"
    oldest = every_page(ledger, ContactFilter(newest_first=False), size=40)
    assert [e for p in oldest for e in p] == newest_first(contacts)[::-1]
    assert contact_list.page(ledger, ContactFilter(), "not a keyset").rows[0]["email"] == pages[0][0]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (ContactFilter(state="failed"), lambda r: r["status"] == "failed"),
        (ContactFilter(state="blocked"), lambda r: r["status"] == "blocked"),
        (ContactFilter(state="sending"), lambda r: r["status"] == "sending"),  # no attempt sent: shown sending
        (ContactFilter(state="sent"), lambda r: False),
        (ContactFilter(state="claimed", run_id="run-b"), lambda r: r["status"] == "claimed" and r["run_id"] == "run-b"),
        (ContactFilter(run_id="run-b"), lambda r: r["run_id"] == "run-b"),
        (ContactFilter(runs=("run-b",)), lambda r: r["run_id"] == "run-b"),
        (ContactFilter(runs=()), lambda r: False),
        (ContactFilter(state="bounced", run_id="run-a"), lambda r: r["status"] == "bounced" and r["run_id"] == "run-a"),
        (
            ContactFilter(changed_from=date(2026, 11, 2), changed_to=date(2026, 11, 2)),
            lambda r: r["updated_at"].date() == date(2026, 11, 2),
        ),
        (ContactFilter(search="C01"), lambda r: "c01" in r["email"]),  # part of an address, any case
        (ContactFilter(search="example.org"), lambda r: r["email"].endswith("@example.org")),  # a domain
        (ContactFilter(search="person 12"), lambda r: r["name"].startswith("Person 12")),  # a name, any case
        (ContactFilter(search="ann_1"), lambda r: r["name"] in ("Ann_10", "Ann_100", "Ann_110", "Ann_120")),
        (ContactFilter(search="n_1"), lambda r: r["name"].startswith("Ann_1")),  # _ is no wildcard
        (ContactFilter(search="%"), lambda r: False),  # nor is %
    ],
)
def test_each_filter_and_the_search_pick_exactly_their_contacts(ledger, contacts, filters, expected):
    assert [e for p in every_page(ledger, filters, size=20) for e in p] == newest_first(
        [r for r in contacts if expected(r)]
    )


def test_the_export_streams_the_filtered_list_with_utc_times(ledger, contacts):
    text = "".join(contact_list.export_csv(ledger, ContactFilter(state="delivered", run_id="run-b")))
    rows = list(csv.DictReader(io.StringIO(text)))
    wanted = [r for r in contacts if r["status"] == "delivered" and r["run_id"] == "run-b"]
    assert [r["email"] for r in rows] == newest_first(wanted)
    first = next(r for r in wanted if r["email"] == rows[0]["email"])
    assert rows[0]["last_change_utc"] == first["updated_at"].isoformat() + "Z"
    assert (rows[0]["state"], rows[0]["run_id"], rows[0]["source_line"]) == (
        "delivered",
        "run-b",
        str(first["source_line"]),
    )


def test_a_run_s_contacts_changed_since_its_report_are_counted(ledger, contacts):
    assert contact_list.changed_since_report(ledger, "run-a") == 0
    operator_actions.release(ledger, "c002@example.com", "alice", "block lifted")  # failed: release dates it 2000
    operator_actions.suppress(ledger, ["c001@example.com", "c100@example.org"], "alice", "asked")
    assert contact_list.changed_since_report(ledger, "run-a") == 2
    assert contact_list.changed_since_report(ledger, "run-b") == 1
    assert contact_list.changed_since_report(ledger, "unknown") is None


def test_only_runs_the_ledger_knows_are_runs(ledger, contacts):
    assert contact_list.run_exists(ledger, "run-a")
    for run_id in ("", ".", "..", "run-c", "../run-a"):
        assert not contact_list.run_exists(ledger, run_id)


def test_a_source_file_as_the_pages_show_it_names_the_runs_that_read_it(ledger, contacts):
    from pathlib import Path

    with ledger.engine.begin() as conn:
        for run_id, file in (("run-a", "/data/in/a.csv"), ("run-b", "b.csv")):
            conn.execute(ledger_runs.update().where(ledger_runs.c.run_id == run_id).values(source_file=file))
    assert contact_list.runs_of_file(ledger, "in/a.csv", [Path("/data")]) == ("run-a",)
    assert contact_list.runs_of_file(ledger, "b.csv", [Path("/data")]) == ("run-b",)
    assert contact_list.runs_of_file(ledger, "a.csv", [Path("/data")]) == ()


@pytest.mark.postgres
@pytest.mark.parametrize("ledger_url", ["postgres"], indirect=True)
def test_a_search_that_scans_too_long_on_postgres_asks_for_a_narrower_one(ledger, monkeypatch):
    from sqlalchemy import text

    with ledger.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO sent_contacts (email, name, status, attempts, claim_attempts, run_id, created_at,"
                " updated_at) SELECT 'c' || n || '@example.com', 'Contact ' || n, 'delivered', 1, 1, 'r', now(),"
                " now() FROM generate_series(1, 200000) AS n"
            )
        )
    monkeypatch.setattr(contact_list, "SEARCH_TIMEOUT_MS", 1)
    with pytest.raises(contact_list.SearchTooBroad, match="narrow it"):
        contact_list.page(ledger, ContactFilter(search="zzz"))
    assert len(contact_list.page(ledger, ContactFilter(state="delivered")).rows) == 50, "no timeout without a search"
