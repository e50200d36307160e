"""The reputation guard: a run whose bounce or complaint share passes its limit stops sending at once and
releases every contact it has not sent to; the next run that lists them sends them (the same attempt)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import pytest

from tests.support.limits import claim_runs
from welcome_mailer import pipeline
from welcome_mailer.ledger import AcceptedAttempt
from welcome_mailer.ledger.limits import ReputationGuard
from welcome_mailer.outcomes.http_lookup import HttpLookupSource
from welcome_mailer.transports.http import HttpEmailProvider
from welcome_mailer.vocabulary import OutcomeEvent


def test_the_guard_decides_from_the_shares_once_enough_outcomes_are_in():
    figures = {"outcomes": 1000, "bounced": 100, "complained": 4, "bounce_rate": 0.1, "complaint_rate": 0.004}
    assert ReputationGuard().verdict(figures) is None, "the mock's 10% bounces never trip the default"
    assert "bounce rate" in ReputationGuard(max_bounce_rate=0.05).verdict(figures)
    assert "complaint rate" in ReputationGuard(max_complaint_rate=0.003).verdict(figures)
    assert ReputationGuard(max_bounce_rate=0, max_complaint_rate=0).verdict(figures) is None, "0 turns it off"
    assert ReputationGuard(min_outcomes=1001, max_bounce_rate=0.05).verdict(figures) is None


def test_a_list_with_40_percent_bounces_stops_at_the_guard_and_the_next_run_sends_the_rest(ledger, start_esp, tmp_path):
    esp = start_esp(hold_rate=0, delivered_rate=0.5, bounced_rate=0.4, blocked_rate=0.1)
    guard = ReputationGuard(min_outcomes=100)
    [batches] = claim_runs(ledger, tmp_path, runs=1, contacts=600, batches=4).values()
    with HttpEmailProvider(esp.url, esp.api_key) as transport:
        sources = [HttpLookupSource(transport)]
        first = pipeline.send_batch(ledger, transport, "run0", batches[0], 150, guard=guard)
        assert first["sent"] == 150
        # The delivery poke records the first batch's outcomes: 40% bounced stops the run.
        assert pipeline.await_delivery(ledger, sources, "run0", 5, linger_seconds=0.2, poll_seconds=0.05, guard=guard)
        later = [pipeline.send_batch(ledger, transport, "run0", b, 150, guard=guard) for b in batches[1:]]
        assert sum(r["sent"] for r in later) == 0, "nothing more is sent once the guard stopped the run"
        figures = ledger.limit_figures("run0")
        detail = json.loads(figures["guard_detail"])
        assert figures["guard_stopped_at"] is not None and "bounce rate" in detail["reason"]
        assert detail["outcomes"] >= 100 and detail["bounce_rate"] > 0.2
        assert ledger.count_unsent("run0") == 0 and ledger.count_resendable("run0", 5) == 0
        assert len(esp.messages()) == 150

        # The next run that lists the same contacts takes the released ones over and sends them.
        ledger.finish_run("run0")
        next_run = tmp_path / "again.csv"
        next_run.write_text((tmp_path / "run0.csv").read_text())
        ledger.renew_lease("run1")
        pipeline.parse_file(ledger, "run1", next_run, tmp_path / "run1-rejected.csv")
        claimed = pipeline.claim_contacts(ledger, "run1", 150, 4)
        sent = sum(pipeline.send_batch(ledger, transport, "run1", b, 150)["sent"] for b in claimed["batches"])

    messages = esp.messages()
    by_recipient: dict[str, list[dict]] = {}
    for message in messages:
        by_recipient.setdefault(message["to"], []).append(message)
    assert sent >= 450 and len(by_recipient) == 600, "every contact released by the guard was emailed by run1"
    first_batch = {m["to"] for m in messages[:150]}
    for address, history in by_recipient.items():
        if address not in first_batch:
            assert [m["idempotency_key"][-2:] for m in history] == ["-1"], f"{address}: one first attempt"


def test_the_report_shows_the_limits_and_the_guards_figures(ledger):
    from welcome_mailer.report import build_report, render_markdown

    summary = {"by_status": {}, "attempts_histogram": {}, "messages_sent": 0, "resent_after_block": 0}
    ledger.add_limit_figures("run", throttled_requests=3, throttle_wait_seconds=2.5, rate_wait_seconds=1.25)
    figures = {"outcomes": 250, "bounced": 100, "complained": 0, "bounce_rate": 0.4, "complaint_rate": 0.0}
    ledger.stop_for_guard("run", "bounce rate 40.0% > 20.0%", figures)
    limits = ledger.limit_figures("run") | {"guard": figures}
    parsed = {"csv_path": "f.csv", "rejected_csv": "r.csv", "encoding": "utf-8", "encoding_warning": None}
    parsed |= {"rows_read": 1, "rejected": 0, "duplicates_in_file": 0, "contacts": 1}
    claimed = {"skipped": 0, "failed_recently": 0, "owned": 1, "claimed_new": 1, "taken_over": 0}
    text = render_markdown(build_report(run_id="run", parsed=parsed, claimed=claimed, summary=summary, phases={},
                                        limits=limits))  # fmt: skip
    assert "| throttled requests (the provider's rate or quota; no attempt spent) | 3 |" in text
    assert "| seconds waiting for the send rate | 1.25 |" in text
    assert "| reputation guard: outcomes, bounce rate, complaint rate | 250, 40.0%, 0.00% |" in text
    assert "reputation guard STOPPED the run" in text and "bounce rate 40.0% > 20.0%" in text


def test_a_resend_poke_counts_the_runs_outcomes_once_an_interval_not_per_batch(
    ledger, start_esp, tmp_path, monkeypatch
):
    """The guard's count is over every message of the run (a million, at 1M contacts): resend_blocked's
    batches share the poke's check (every GUARD_CHECK_SECONDS) instead of each making its own."""
    esp = start_esp(hold_rate=0, delivered_rate=0, bounced_rate=0, blocked_rate=1)
    [batches] = claim_runs(ledger, tmp_path, runs=1, contacts=200, batches=4).values()
    counts, real_figures = [], ledger.outcome_figures
    monkeypatch.setattr(ledger, "outcome_figures", lambda run_id: counts.append(run_id) or real_figures(run_id))
    sent_batches, real_send = [], pipeline.send_batch
    monkeypatch.setattr(pipeline, "send_batch", lambda *a, **k: sent_batches.append(a[3]) or real_send(*a, **k))
    with HttpEmailProvider(esp.url, esp.api_key) as transport:
        for batch in batches:
            real_send(ledger, transport, "run0", batch, 50)
        started = time.monotonic()
        done = pipeline.resend_blocked(
            ledger, transport, [HttpLookupSource(transport)], "run0", max_attempts=3, batch_size=50, max_batches=4,
            backoff_seconds=0, linger_seconds=5, poll_seconds=0.05, guard=ReputationGuard(min_outcomes=100),
        )  # fmt: skip
        elapsed = time.monotonic() - started
    assert done and len(esp.messages()) == 600, "every contact blocked three times: three messages each"
    assert len(sent_batches) >= 8, "two rounds of resends, four batches each"
    assert len(counts) <= 1 + elapsed // pipeline.GUARD_CHECK_SECONDS, f"{len(counts)} counts in {elapsed:.1f} s"


EPOCH = datetime(2026, 12, 6)


class CountingLedger:
    """The guard keeper's side of the ledger, on a fake clock: each count of the run's outcomes takes
    ``count_seconds`` over ``messages``; ``stopped`` is the run's flag (another task may set it);
    ``count_due_at`` the run's next count, shared by every keeper of the run; ``claims`` every claim made
    (``before_claim``: what happens between a task's look at the row and its claim)."""

    def __init__(self, clock: list[float], count_seconds: float, messages: int = 600) -> None:
        self.clock, self.count_seconds, self.messages = clock, count_seconds, messages
        self.counts: list[float] = []
        self.claims: list[bool] = []
        self.flag_reads = 0
        self.stopped = False
        self.count_due_at: datetime | None = None
        self.before_claim: Callable[[], None] = lambda: None

    def outcome_figures(self, run_id: str) -> dict:
        self.counts.append(self.clock[0])
        self.clock[0] += self.count_seconds
        figures = {"outcomes": 0, "bounced": 0, "complained": 0, "bounce_rate": 0.0, "complaint_rate": 0.0}
        return {"messages": self.messages, **figures}

    def guard_state(self, run_id: str) -> tuple[bool, datetime | None]:
        self.flag_reads += 1
        return self.stopped, self.count_due_at

    def guard_count_due(self, run_id: str, due_at: datetime | None) -> None:
        self.count_due_at = due_at

    def claim_guard_count(self, run_id: str, now: datetime, until: datetime) -> bool:
        self.before_claim()
        claimed = self.count_due_at is not None and self.count_due_at <= now
        if claimed:
            self.count_due_at = until
        self.claims.append(claimed)
        return claimed


def on_the_clock(monkeypatch, clock: list[float]) -> None:
    monkeypatch.setattr(pipeline.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(pipeline, "utcnow", lambda: EPOCH + timedelta(seconds=clock[0]))


def test_a_slow_count_is_made_less_often_but_a_stop_by_another_task_is_seen_within_the_check_interval(monkeypatch):
    """A count over a large run's messages takes seconds: a task counts again only once
    GUARD_COUNT_SPACING times that has passed, and in between reads the run's stop flag every
    GUARD_CHECK_SECONDS, so a stop another task decided still ends its sending at once."""
    clock = [0.0]
    on_the_clock(monkeypatch, clock)
    ledger = CountingLedger(clock, count_seconds=1.5)  # a 1M-message run on Postgres
    must_stop = pipeline.guard_keeper(ledger, "run0", ReputationGuard())
    for _ in range(200):  # a send task asking once a second for 200 s (the clock also moves while counting)
        assert must_stop() is False
        clock[0] += 1.0
    spacing = pipeline.GUARD_COUNT_SPACING * 1.5
    assert ledger.counts[0] == 0.0 and len(ledger.counts) >= 2, "the first call counts, and so does a later one"
    assert all(spacing <= b - a <= spacing + 1.5 for a, b in zip(ledger.counts, ledger.counts[1:], strict=False))
    assert ledger.flag_reads >= clock[0] // (pipeline.GUARD_CHECK_SECONDS + 1.5)

    ledger.stopped = True  # another task's count stopped the run
    counts_before, stopped_at = len(ledger.counts), clock[0]
    while not must_stop():
        clock[0] += 0.5
    assert clock[0] - stopped_at <= pipeline.GUARD_CHECK_SECONDS and len(ledger.counts) == counts_before


def test_a_quick_count_is_still_made_every_check_interval(monkeypatch):
    clock = [0.0]
    on_the_clock(monkeypatch, clock)
    ledger = CountingLedger(clock, count_seconds=0.01)  # a small run
    must_stop = pipeline.guard_keeper(ledger, "run0", ReputationGuard())
    while clock[0] < 60:
        must_stop()
        clock[0] += 0.25
    assert 10 <= len(ledger.counts) <= 13, ledger.counts  # one every GUARD_CHECK_SECONDS (5 s)
    # A quick count is not spaced per run: a task that starts now (a poke that just recorded a batch's
    # bounces) judges at once, whoever counted last.
    assert ledger.count_due_at is None
    counts_before = len(ledger.counts)
    pipeline.guard_keeper(ledger, "run0", ReputationGuard())()
    assert len(ledger.counts) == counts_before + 1


def test_the_counts_are_spaced_per_run_not_per_task(monkeypatch):
    """Every send task and every sensor poke of a run used to count its outcomes as it started (0.4 s at 1M
    messages on SQLite, 1-2 s on Postgres): the run's 8 send tasks and its pokes counted seconds apart.
    A keeper that starts while the run's next count is not due yet only reads the run's row."""
    clock = [0.0]
    on_the_clock(monkeypatch, clock)
    ledger = CountingLedger(clock, count_seconds=1.5)
    keepers = []
    for _ in range(8):  # send tasks starting one after another, 2 s apart
        keepers.append(pipeline.guard_keeper(ledger, "run0", ReputationGuard()))
        assert keepers[-1]() is False
        clock[0] += 2.0
    assert ledger.counts == [0.0], "the first task counted; the next seven found the run's count not due"
    while clock[0] < pipeline.GUARD_COUNT_SPACING * 1.5 + 10:  # they all go on checking
        for must_stop in keepers:
            assert must_stop() is False
        clock[0] += 1.0
    assert len(ledger.counts) == 2, "one count more once the run's spacing passed, by one task"

    ledger.stopped = True  # one task's count stopped the run: every other task sees it within the interval
    stopped_at = clock[0]
    while not all(must_stop() for must_stop in keepers):
        clock[0] += 0.5
    assert clock[0] - stopped_at <= pipeline.GUARD_CHECK_SECONDS


def test_the_tasks_that_find_a_large_runs_count_due_together_make_it_once(monkeypatch):
    """A large run's 8 send tasks start together: each found its count due and counted at once (on Postgres at
    1M, 24-32 counts of 2-3 s in a run). Each claims the count it found due: one claim takes it and that task
    counts; the others go on without, and so at its next due time."""
    clock = [0.0]
    on_the_clock(monkeypatch, clock)
    ledger = CountingLedger(clock, count_seconds=1.5, messages=1_000_000)
    ledger.count_due_at = EPOCH  # its claim found it large: its tasks share its counts from the first
    keepers = [pipeline.guard_keeper(ledger, "run0", ReputationGuard()) for _ in range(8)]

    waiting = keepers[1:]

    def the_next_one_looks_and_claims_too() -> None:  # between a task's look and its claim: all 8 look first
        if waiting:
            assert waiting.pop(0)() is False

    ledger.before_claim = the_next_one_looks_and_claims_too
    assert keepers[0]() is False
    assert len(ledger.claims) == 8 and ledger.claims.count(True) == 1, ledger.claims
    assert ledger.counts == [0.0], "one count: the claiming task's"
    assert ledger.count_due_at == EPOCH + timedelta(seconds=pipeline.GUARD_COUNT_SPACING * 1.5)
    while clock[0] < pipeline.GUARD_COUNT_SPACING * 1.5 + 10:
        for must_stop in keepers:
            assert must_stop() is False
        clock[0] += 1.0
    assert len(ledger.counts) == 2, "one count more once the run's spacing passed, by one task"


def test_a_count_that_raised_hands_its_claim_back_and_a_killed_tasks_claim_lapses(monkeypatch):
    clock = [0.0]
    on_the_clock(monkeypatch, clock)
    ledger = CountingLedger(clock, count_seconds=1.5, messages=1_000_000)
    ledger.count_due_at = EPOCH
    real_count = ledger.outcome_figures

    def the_database_went_away(run_id: str) -> dict:
        raise ConnectionError("the database went away")

    ledger.outcome_figures = the_database_went_away
    with pytest.raises(ConnectionError):
        pipeline.guard_keeper(ledger, "run0", ReputationGuard())()
    assert ledger.count_due_at == EPOCH, "handed back: still due"
    ledger.outcome_figures = real_count
    assert pipeline.guard_keeper(ledger, "run0", ReputationGuard())() is False
    assert ledger.counts == [0.0], "the next task to look made the count at once"

    clock[0] = 200.0  # past the spacing: a task claims the count, and is killed before it counts
    assert ledger.claim_guard_count("run0", EPOCH + timedelta(seconds=200), EPOCH + timedelta(seconds=260))
    others = [pipeline.guard_keeper(ledger, "run0", ReputationGuard()) for _ in range(3)]
    while clock[0] < 200 + pipeline.GUARD_COUNT_CLAIM_SECONDS + pipeline.GUARD_CHECK_SECONDS + 1:
        for must_stop in others:
            assert must_stop() is False
        clock[0] += 1.0
    assert len(ledger.counts) == 2, "nobody counted while the claim held; one task did once it lapsed"
    assert 200 + pipeline.GUARD_COUNT_CLAIM_SECONDS <= ledger.counts[1] <= 201 + pipeline.GUARD_COUNT_CLAIM_SECONDS


def test_a_small_run_counted_slowly_once_is_counted_by_every_task_again_after_its_next_count(monkeypatch):
    """A small run whose count was slow once (the database busy) has its next count spaced like a large
    run's; when that one is quick, each task counts as it starts again (a poke judges fresh bounces at once)."""
    clock = [0.0]
    on_the_clock(monkeypatch, clock)
    ledger = CountingLedger(clock, count_seconds=0.3)
    assert pipeline.guard_keeper(ledger, "run0", ReputationGuard())() is False
    assert ledger.count_due_at == EPOCH + timedelta(seconds=pipeline.GUARD_COUNT_SPACING * 0.3)
    ledger.count_seconds = 0.01
    clock[0] = pipeline.GUARD_COUNT_SPACING * 0.3 + 1
    assert pipeline.guard_keeper(ledger, "run0", ReputationGuard())() is False
    assert len(ledger.counts) == 2 and ledger.count_due_at is None
    for _ in range(3):  # pokes that just recorded bounces, each judging them at once
        assert pipeline.guard_keeper(ledger, "run0", ReputationGuard())() is False
    assert len(ledger.counts) == 5


def test_a_large_runs_quick_count_still_spaces_its_next_one(monkeypatch):
    """A run of GUARD_SHARED_COUNT_MESSAGES or more is large whatever its count took (Postgres counts 50k
    messages in about 0.1 s): its counts stay shared."""
    clock = [0.0]
    on_the_clock(monkeypatch, clock)
    ledger = CountingLedger(clock, count_seconds=0.1, messages=pipeline.GUARD_SHARED_COUNT_MESSAGES)
    ledger.count_due_at = EPOCH
    for _ in range(3):
        assert pipeline.guard_keeper(ledger, "run0", ReputationGuard())() is False
        clock[0] += 1.0
    assert ledger.counts == [0.0], "the first task counted; the next found the run's count not due"
    assert ledger.count_due_at == EPOCH + timedelta(seconds=pipeline.GUARD_COUNT_SPACING * 0.1)


class CpuCountingLedger(CountingLedger):
    """A count that also takes ``count_cpu_seconds`` of the thread's CPU (``cpu``: the fake thread_time)."""

    def __init__(self, clock: list[float], count_seconds: float, cpu: list[float], count_cpu_seconds: float) -> None:
        super().__init__(clock, count_seconds)
        self.cpu, self.count_cpu_seconds = cpu, count_cpu_seconds

    def outcome_figures(self, run_id: str) -> dict:
        self.cpu[0] += self.count_cpu_seconds
        return super().outcome_figures(run_id)


def test_a_count_that_takes_the_threads_cpu_spaces_the_runs_counts_however_short(monkeypatch):
    """On SQLite the counting thread does the count's work: a 100k-message run's takes 0.04-0.05 s, under
    GUARD_SHARED_COUNT_SECONDS, and each of its 8 send tasks and its pokes counted as they started (43 counts,
    2 s of a 20 s run). Its CPU time spaces the run's counts: the next task only reads the run's row."""
    clock, cpu = [0.0], [0.0]
    on_the_clock(monkeypatch, clock)
    monkeypatch.setattr(pipeline.time, "thread_time", lambda: cpu[0])
    ledger = CpuCountingLedger(clock, count_seconds=0.05, cpu=cpu, count_cpu_seconds=0.045)
    for _ in range(8):  # send tasks one after another, 0.2 s apart
        assert pipeline.guard_keeper(ledger, "run0", ReputationGuard())() is False
        clock[0] += 0.2
    assert ledger.counts == [0.0], "the first task counted; the next seven found the run's count not due"
    assert ledger.count_due_at == EPOCH + timedelta(seconds=pipeline.GUARD_COUNT_SPACING * 0.05)


def test_a_short_count_that_mostly_waited_is_still_made_by_every_task(monkeypatch):
    """A small run's count that measured 0.05 s of wall time, nearly all of it waiting (for the GIL beside the
    send threads, for the disk), took little CPU: every task still counts as it starts, so a poke that just
    recorded a batch's bounces judges them at once."""
    clock, cpu = [0.0], [0.0]
    on_the_clock(monkeypatch, clock)
    monkeypatch.setattr(pipeline.time, "thread_time", lambda: cpu[0])
    ledger = CpuCountingLedger(clock, count_seconds=0.05, cpu=cpu, count_cpu_seconds=0.001)
    for _ in range(3):
        assert pipeline.guard_keeper(ledger, "run0", ReputationGuard())() is False
        clock[0] += 0.2
    assert len(ledger.counts) == 3 and ledger.count_due_at is None


def test_a_small_runs_real_count_takes_far_less_cpu_than_spaces_it(ledger, tmp_path):
    """The threshold against the real count: 600 messages with outcomes (the 40%-bounce runs' size), on
    SQLite and Postgres, take a small part of GUARD_SHARED_COUNT_CPU_SECONDS of the counting thread's CPU,
    the first count (compiling its statement) as well."""
    [batches] = claim_runs(ledger, tmp_path, runs=1, contacts=600, batches=1).values()
    attempts = ledger.start_attempts("run0", batches[0])
    ledger.record_sent("run0", [AcceptedAttempt(a.email, a.attempt, f"id-{a.email}") for a in attempts])
    ledger.record_outcomes(OutcomeEvent("bounced", provider_message_id=f"id-{a.email}") for a in attempts)
    took = []
    for _ in range(2):  # a task's first count compiles the statement; its later ones find it cached
        started = time.thread_time()
        figures = ledger.outcome_figures("run0")
        assert (figures["messages"], figures["outcomes"], figures["bounced"]) == (600, 600, 600)
        took.append(time.thread_time() - started)
    assert took[0] < pipeline.GUARD_SHARED_COUNT_CPU_SECONDS / 2, f"first count: {took[0] * 1000:.1f} ms of CPU"
    assert took[1] < pipeline.GUARD_SHARED_COUNT_CPU_SECONDS / 4, f"next count: {took[1] * 1000:.1f} ms of CPU"


def test_the_runs_next_count_is_kept_in_the_ledger_for_every_task(ledger):
    """Over a real ledger (SQLite and Postgres): no row yet means due now; the time a count sets is read
    back with the stop flag; a stop by the guard keeps it."""
    assert ledger.guard_state("run0") == (False, None)
    due = datetime(2026, 12, 6, 12, 0, 5)
    ledger.guard_count_due("run0", due)
    assert ledger.guard_state("run0") == (False, due)
    ledger.guard_count_due("run0", due + timedelta(seconds=50))
    ledger.stop_for_guard("run0", "bounce rate 40.0% > 20.0%", {"outcomes": 100})
    assert ledger.guard_state("run0") == (True, due + timedelta(seconds=50))
    assert ledger.limit_figures("run0")["throttled_requests"] == 0


def test_of_the_tasks_claiming_a_due_count_at_once_one_gets_it(ledger):
    """Over a real ledger (SQLite and Postgres), 8 threads claim the count they all found due: one claim moves
    it on, and the others find it moved. A count not due yet, or of a run whose tasks do not share its
    counts, is not claimed."""
    due = datetime(2026, 12, 6, 12, 0, 5, 250000)
    ledger.share_guard_counts("run0", due)
    ledger.share_guard_counts("run0", due + timedelta(seconds=9))  # a retried claim: the due count is kept
    stopped, seen = ledger.guard_state("run0")
    assert (stopped, seen) == (False, due)
    assert ledger.claim_guard_count("run0", seen - timedelta(milliseconds=1), seen + timedelta(minutes=1)) is False
    start = threading.Barrier(8)

    def claim(n: int) -> bool:
        start.wait()
        return ledger.claim_guard_count("run0", seen, seen + timedelta(minutes=1, seconds=n))

    with ThreadPoolExecutor(8) as pool:
        claimed = list(pool.map(claim, range(8)))
    assert claimed.count(True) == 1, claimed
    assert ledger.guard_state("run0") == (False, seen + timedelta(minutes=1, seconds=claimed.index(True)))
    assert ledger.claim_guard_count("run1", seen, seen) is False, "a run without a due count has none to claim"


def test_a_run_claiming_many_messages_shares_its_counts_from_its_claim(ledger, tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "GUARD_SHARED_COUNT_MESSAGES", 100)
    claim_runs(ledger, tmp_path, runs=1, contacts=100, batches=2)
    assert ledger.guard_state("run0")[1] is not None, "100 messages: shared"
    assert ledger.outcome_figures("run0")["messages"] == 100
    path = tmp_path / "small.csv"
    path.write_text("".join(f"User {i}, small{i}@example.com\n" for i in range(99)))
    ledger.renew_lease("small")
    pipeline.parse_file(ledger, "small", path, tmp_path / "small-rejected.csv")
    assert pipeline.claim_contacts(ledger, "small", 50, 2)["to_send"] == 99
    assert ledger.guard_state("small") == (False, None), "99 messages: each task counts as it starts"


def test_on_sqlite_the_guards_count_reads_a_snapshot_without_waiting_for_a_writer(tmp_path):
    """The keeper spaces a large run's counts by how long a count took: a count that waited for another
    task's write lock would space a small run's counts as a large run's. It reads from a snapshot."""
    from welcome_mailer.ledger import Ledger, connect
    from welcome_mailer.ledger.migrate import upgrade

    ledger = Ledger(connect(f"sqlite:///{tmp_path / 'ledger.db'}"))
    upgrade(ledger.engine)
    writer = ledger.engine.connect()
    writer.begin()  # BEGIN IMMEDIATE: another task's write transaction, open
    try:
        started = time.monotonic()
        assert ledger.outcome_figures("run0")["outcomes"] == 0
        assert time.monotonic() - started < 1.0, "the count waited for the writer"
    finally:
        writer.rollback()
        writer.close()
        ledger.engine.dispose()
