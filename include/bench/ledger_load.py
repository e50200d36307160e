"""Load test of the ledger's send phase on Postgres, without Airflow (issue 14).

On a throwaway database: stage and claim ``--rows`` generated contacts for one run, numbered into
``--tasks`` batches; then ``--tasks`` threads play the send tasks at once (start_attempts of their batch,
then record_sent in ``--chunk``-row chunks with fake provider ids); then the outcome sensor (one
pending_messages, then record_outcomes in ``--outcome-chunk``-message chunks). Prints seconds per chunk at
the start and end of each phase, the totals, and EXPLAIN (ANALYZE, BUFFERS) of the record_sent and
record_outcomes UPDATEs mid-phase (record_sent updates only send_attempts for an accepted attempt). The
database is dropped at the end.

    .venv/bin/python -m include.bench.ledger_load --rows 1000000

``--prior-rows`` first runs a small earlier run and ANALYZEs, as on a ledger in use: the bulk claim then
leaves the planner with statistics that know nothing of the new run (autovacuum is too slow, or off).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import statistics
import threading
import time

from sqlalchemy import event

from include.bench.postgres import row_updates, scratch_database
from welcome_mailer.contacts import Contact
from welcome_mailer.ledger import AcceptedAttempt, Ledger, connect
from welcome_mailer.ledger.migrate import upgrade
from welcome_mailer.vocabulary import OutcomeEvent

ADMIN_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432"


def generate(run: str, rows: int) -> list[Contact]:
    """Contacts with emails in no particular order (the key order of a real file)."""
    return [
        Contact(f"{hashlib.md5(f'{run}{i}'.encode()).hexdigest()[:12]}.{i}@example.com", f"Name {i}", i + 1)
        for i in range(rows)
    ]


def stage_and_claim(ledger: Ledger, run_id: str, rows: int, tasks: int) -> tuple[list[int], float]:
    started = time.perf_counter()
    ledger.renew_lease(run_id)
    everyone = generate(run_id, rows)
    for start in range(0, rows, 50_000):
        ledger.stage(run_id, everyone[start : start + 50_000])
    claimed = ledger.claim(run_id, batch_size=500, max_batches=tasks)
    return claimed.batches, time.perf_counter() - started


class Explainer:
    """Runs a thread's next UPDATE of sent_contacts and of send_attempts (one ledger call) as EXPLAIN
    (ANALYZE, BUFFERS): the updates still happen (ANALYZE executes them), and the plans are kept."""

    def __init__(self, engine) -> None:
        self.wanted = threading.local()
        self.plans: dict[str, str] = {}
        event.listen(engine, "before_cursor_execute", self.before, retval=True)
        event.listen(engine, "after_cursor_execute", self.after)

    def arm(self, label: str) -> None:
        self.wanted.label = label

    def before(self, conn, cursor, statement, parameters, context, executemany):
        # an UPDATE statement, not a row lock (SELECT ... FOR UPDATE): explaining a lock lost its rows, and
        # every later outcome of the thread went to the inbox as unmatched
        if getattr(self.wanted, "label", None) and " UPDATE " in f" {statement}" and " FOR UPDATE" not in statement:
            statement = "EXPLAIN (ANALYZE, BUFFERS) " + statement
            self.wanted.active = True
        return statement, parameters

    def after(self, conn, cursor, statement, parameters, context, executemany):
        if getattr(self.wanted, "active", False):
            table = re.search(r"\bUPDATE (\w+)", statement).group(1)
            self.plans[f"UPDATE {table} of {self.wanted.label}"] = "\n".join(row[0] for row in cursor.fetchall())
            self.wanted.active = False
            if table == "send_attempts":  # the second and last UPDATE of the call
                self.wanted.label = None


def summary(times: list[float], edge: int = 10) -> dict:
    return {
        "chunks": len(times),
        "first_s": round(statistics.mean(times[:edge]), 4),
        "last_s": round(statistics.mean(times[-edge:]), 4),
        "median_s": round(statistics.median(times), 4),
        "max_s": round(max(times), 4),
    }


def send_phase(
    ledger: Ledger, explainer: Explainer, run_id: str, batches: list[int], chunk: int, sample: int | None
) -> dict:
    """Every batch's send task at once: start_attempts, then record_sent per chunk (no ESP: ids are fake)."""
    barrier = threading.Barrier(len(batches))
    starts: dict[int, float] = {}
    chunk_times: dict[int, list[float]] = {}

    def task(batch_no: int) -> None:
        barrier.wait()
        t0 = time.perf_counter()
        attempts = ledger.start_attempts(run_id, batch_no)
        starts[batch_no] = time.perf_counter() - t0
        times = chunk_times[batch_no] = []
        parts = [attempts[at : at + chunk] for at in range(0, len(attempts), chunk)]
        if sample and len(parts) > 2 * sample:  # the middle in one statement, untimed
            middle = [a for part in parts[sample:-sample] for a in part]
            parts = [*parts[:sample], middle, *parts[-sample:]]
        for n, part in enumerate(parts):
            if batch_no == 0 and n in (0, len(parts) // 2 - 1):
                explainer.arm("record_sent, first chunk" if n == 0 else "record_sent, mid-phase")
            t0 = time.perf_counter()
            ledger.record_sent(
                run_id, [AcceptedAttempt(a.email, a.attempt, f"msg-{a.email}-{a.attempt}") for a in part]
            )
            if len(part) <= chunk:
                times.append(time.perf_counter() - t0)

    started = time.perf_counter()
    threads = [threading.Thread(target=task, args=(b,)) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = time.perf_counter() - started
    every = [t for times in chunk_times.values() for t in times]
    return {
        "total_s": round(total, 2),
        "start_attempts_s": [round(starts[b], 2) for b in batches],
        "record_sent_work_s": round(sum(every), 1),
        # chunk n of every task, averaged over the tasks: the phase's time line
        "record_sent_chunk": summary([statistics.mean(col) for col in zip(*chunk_times.values(), strict=False)]),
    }


def outcome_phase(ledger: Ledger, explainer: Explainer, run_id: str, chunk: int, limit: int | None) -> dict:
    """The sensor: the run's pending messages, then their outcomes recorded chunk by chunk."""
    started = time.perf_counter()
    t0 = time.perf_counter()
    in_flight = ledger.count_in_flight(run_id)
    count_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    pending = list(ledger.pending_messages(run_id))
    pending_s = time.perf_counter() - t0
    outcomes = ("delivered",) * 18 + ("bounced", "blocked")
    chunks = list(range(0, len(pending), chunk))[:limit]
    times = []
    for n, at in enumerate(chunks):
        part = pending[at : at + chunk]
        if n == len(chunks) // 2:
            explainer.arm("record_outcomes, mid-phase")
        t0 = time.perf_counter()
        ledger.record_outcomes(
            [
                OutcomeEvent(outcomes[i % len(outcomes)], provider_message_id=m.message_id)
                for i, m in enumerate(part, at)
            ]
        )
        times.append(time.perf_counter() - t0)
    return {
        "total_s": round(time.perf_counter() - started, 2),
        "count_in_flight": in_flight,
        "count_in_flight_s": round(count_s, 2),
        "pending_messages_s": round(pending_s, 2),
        "record_outcomes_chunk": summary(times),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--chunk", type=int, default=500)
    parser.add_argument("--outcome-chunk", type=int, default=1000)
    parser.add_argument(
        "--sample", type=int, help="time only each task's first and last SAMPLE chunks; the rest in one statement"
    )
    parser.add_argument("--outcome-limit", type=int, help="record only this many outcome chunks")
    parser.add_argument("--prior-rows", type=int, default=1000, help="an earlier run, then ANALYZE (0: none)")
    parser.add_argument("--keep", action="store_true", help="keep the database")
    parser.add_argument(
        "--sql", action="append", default=[], help="a statement run after the migration (a schema variant to try)"
    )
    args = parser.parse_args()

    with scratch_database(ADMIN_URL, "wm_load_", keep=args.keep) as url:
        engine = connect(url)
        try:
            upgrade(engine)
            with engine.begin() as conn:
                for statement in args.sql:
                    conn.exec_driver_sql(statement)
            ledger = Ledger(engine)
            explainer = Explainer(engine)
            report: dict = {"rows": args.rows, "tasks": args.tasks, "database": url.rsplit("/", 1)[-1]}
            if args.prior_rows:
                batches, _ = stage_and_claim(ledger, "prior-run", args.prior_rows, 1)
                for b in batches:
                    a = ledger.start_attempts("prior-run", b)
                    ledger.record_sent("prior-run", [AcceptedAttempt(x.email, x.attempt, f"m-{x.email}") for x in a])
                with engine.begin() as conn:
                    conn.exec_driver_sql("ANALYZE")
            run_id = "load-run"
            batches, claim_s = stage_and_claim(ledger, run_id, args.rows, args.tasks)
            report["stage_and_claim_s"] = round(claim_s, 1)
            report["send"] = send_phase(ledger, explainer, run_id, batches, args.chunk, args.sample)
            print(json.dumps(report["send"]), flush=True)
            report["outcomes"] = outcome_phase(ledger, explainer, run_id, args.outcome_chunk, args.outcome_limit)
            sent = args.prior_rows + args.rows  # one update per recorded send, then one per recorded outcome
            report["send_attempts_updates"] = row_updates(engine, "send_attempts", at_least=sent)
            print(json.dumps(report, indent=1))
            for label, plan in explainer.plans.items():
                print(f"\n-- EXPLAIN (ANALYZE, BUFFERS) of the {label}\n{plan}")
        finally:
            engine.dispose()


if __name__ == "__main__":
    main()
