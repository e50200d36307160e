"""How fast the ledger's pages answer on a big ledger (``make bench-ui``): a Postgres ledger of N contacts
(default 10M) generated with INSERT ... SELECT generate_series (attempts spread over 90 days, outcomes in
the mock's proportions), then the contact lookup and the overview, as the UI's pages call them
(``welcome_mailer.operator_actions``), and pages of the contacts list (``welcome_mailer.contact_list``):
filtered by state, by run, by state and run and by last-change dates, each first page and a page deep
in the list (after a keyset), and a search. Targets: lookup under 50 ms, overview under 1 s, a filtered
page under 100 ms at p95.

    python -m include.bench.bench_ui [--contacts 10000000] [--postgres postgresql://postgres@127.0.0.1:5432]
    [--keep]   keep the database (wm_bench_ui) for a second look; reused, not regenerated, next time

Appends one line to bench/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import create_engine, text

from welcome_mailer import contact_list, operator_actions
from welcome_mailer.contact_list import ContactFilter
from welcome_mailer.ledger import Ledger, connect
from welcome_mailer.ledger.migrate import upgrade

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results.jsonl"
DATABASE = "wm_bench_ui"
RUNS = 40  # the generated contacts are spread over this many runs

# One row per contact: 80% delivered, 10% bounced, 8% failed after a block, 1% still sending (in flight, as
# a run's contacts while it runs, or a stopped run's: their message accepted, no outcome yet, shown sent), 1%
# suppressed; a tenth of them needed a second attempt. Addresses are c<n>@example.com, so the bench knows which exist.
GENERATE = [
    """INSERT INTO ledger_runs (run_id, lease_expires_at, finished_at, created_at)
       SELECT 'bench-run-' || r, now() - (r || ' days')::interval, now() - (r || ' days')::interval,
              now() - (r || ' days')::interval - interval '1 hour'
       FROM generate_series(1, :runs) AS r""",
    """INSERT INTO sent_contacts (email, name, status, attempts, claim_attempts, run_id, batch_no,
                                 created_at, updated_at, source_line)
       SELECT 'c' || n || '@example.com', 'Contact ' || n,
              CASE WHEN n % 100 < 80 THEN 'delivered' WHEN n % 100 < 90 THEN 'bounced'
                   WHEN n % 100 < 98 THEN 'failed' WHEN n % 100 = 98 THEN 'sending'
                   ELSE 'suppressed' END,
              1 + (n % 10 = 0)::int, 1 + (n % 10 = 0)::int, 'bench-run-' || (1 + n % :runs), 0,
              now() - ((n % 90) || ' days')::interval, now() - ((n % 90) || ' days')::interval, n
       FROM generate_series(1, :contacts) AS n""",
    """INSERT INTO send_attempts (email, attempt, idempotency_key, run_id, status, provider_message_id,
                                 error, created_at, updated_at)
       SELECT 'c' || n || '@example.com', a, 'welcome-' || md5(n::text) || '-' || a, 'bench-run-' || (1 + n % :runs),
              CASE WHEN a = 1 AND n % 10 = 0 THEN 'blocked' WHEN n % 100 < 80 THEN 'delivered'
                   WHEN n % 100 < 90 THEN 'bounced' WHEN n % 100 = 98 THEN 'sent' ELSE 'blocked' END,
              'm-' || n || '-' || a, NULL,
              now() - ((n % 90) || ' days')::interval + (a || ' minutes')::interval,
              now() - ((n % 90) || ' days')::interval + (a || ' minutes')::interval
       FROM generate_series(1, :contacts) AS n, generate_series(1, 2) AS a
       WHERE a = 1 OR n % 10 = 0""",
]


def timed(call, repeat: int) -> list[float]:
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    return seconds


def p95_ms(seconds: list[float]) -> float:
    return round(sorted(seconds)[int(len(seconds) * 0.95)] * 1000, 2)


def list_pages(ledger: Ledger, repeat: int = 40) -> dict[str, list[float]]:
    """Each filter's first page and a page deep in it (the 20th, reached by its keyset), ``repeat`` times."""
    today = datetime.now(UTC).date()
    filters = {
        "all": ContactFilter(),
        "state": ContactFilter(state="failed"),
        "run": ContactFilter(run_id="bench-run-7"),
        # bench-run-19 holds half of the contacts in flight (GENERATE), and they are a fifth of its own contacts
        "run_with_contacts_in_flight": ContactFilter(run_id="bench-run-19"),
        "state_in_flight": ContactFilter(state="sent"),  # sending, its message accepted: the latest attempt read
        "state_run": ContactFilter(state="bounced", run_id="bench-run-3"),
        "dates": ContactFilter(changed_from=today - timedelta(days=30), changed_to=today - timedelta(days=20)),
        "state_oldest": ContactFilter(state="suppressed", newest_first=False),
    }
    seconds = {}
    for name, chosen in filters.items():
        after = ""
        for _ in range(19):
            after = contact_list.page(ledger, chosen, after).next_after or ""
        seconds[name] = timed(lambda chosen=chosen: contact_list.page(ledger, chosen), repeat)
        seconds[f"{name}_page20"] = timed(
            lambda chosen=chosen, after=after: contact_list.page(ledger, chosen, after), repeat
        )
    return seconds


def searches(ledger: Ledger) -> dict[str, float | str]:
    """A search of the whole list (a scan: it may give up, as the page does) and one within a state."""
    found = {}
    for name, chosen in (
        ("all", ContactFilter(search="c4242")),
        ("in_state", ContactFilter(state="suppressed", search="c4242")),
    ):
        try:
            found[f"search_s_{name}"] = round(max(timed(lambda chosen=chosen: contact_list.page(ledger, chosen), 3)), 2)
        except contact_list.SearchTooBroad:
            found[f"search_s_{name}"] = f"gave up after {contact_list.SEARCH_TIMEOUT_MS / 1000:g} s"
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contacts", type=int, default=10_000_000)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)

    admin = create_engine(f"{args.postgres}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        exists = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": DATABASE}).scalar()
        if exists and not args.keep:
            conn.execute(text(f"DROP DATABASE {DATABASE} WITH (FORCE)"))
        if not exists or not args.keep:
            conn.execute(text(f"CREATE DATABASE {DATABASE}"))
    engine = connect(f"{args.postgres}/{DATABASE}")
    upgrade(engine)
    with engine.connect() as conn:
        have = conn.execute(text("SELECT count(*) FROM sent_contacts")).scalar_one()
    generate_seconds = None
    if have != args.contacts:
        started = time.perf_counter()
        with engine.begin() as conn:
            conn.execute(text("TRUNCATE sent_contacts, send_attempts, ledger_runs"))
            for statement in GENERATE:
                conn.execute(text(statement), {"contacts": args.contacts, "runs": RUNS})
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))  # what autovacuum does after a bulk load: index-only scans
        generate_seconds = round(time.perf_counter() - started, 1)
        print(f"generated {args.contacts:,} contacts in {generate_seconds} s")

    ledger = Ledger(engine, erase_key=b"bench")
    rng = random.Random(1)
    with tempfile.TemporaryDirectory() as reports:
        reports_dir = Path(reports)
        emails = [f"c{rng.randint(1, args.contacts)}@example.com" for _ in range(200)]
        lookups = iter(emails * 2)
        operator_actions.lookup(ledger, emails[0])  # connection pool warmed
        lookup = timed(lambda: operator_actions.lookup(ledger, next(lookups)), len(emails))
        overview_seconds = timed(lambda: operator_actions.overview(ledger, reports_dir), 5)
    pages = list_pages(ledger)
    searched = searches(ledger)
    result = {
        "bench": "ui",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "contacts": args.contacts,
        "generate_seconds": generate_seconds,
        "lookup_ms_median": round(statistics.median(lookup) * 1000, 2),
        "lookup_ms_p95": round(sorted(lookup)[int(len(lookup) * 0.95)] * 1000, 2),
        "overview_s_median": round(statistics.median(overview_seconds), 3),
        "overview_s_max": round(max(overview_seconds), 3),
        **{f"list_ms_p95_{name}": p95_ms(seconds) for name, seconds in pages.items()},
        "list_ms_p95_filtered_worst": max(p95_ms(s) for s in pages.values()),
        **searched,
    }
    print(json.dumps(result))
    RESULTS.parent.mkdir(exist_ok=True)
    with RESULTS.open("a") as handle:
        handle.write(json.dumps(result) + "\n")
    engine.dispose()
    if not args.keep:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE {DATABASE} WITH (FORCE)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
