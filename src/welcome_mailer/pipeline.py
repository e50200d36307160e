"""The steps of one welcome run, as plain functions of a ledger, a transport and outcome sources.

The DAG's tasks are thin calls to these; tests call them directly. Each step is safe to run again (an
Airflow retry, a cleared task): the ledger's state decides what is left to do.
"""

from __future__ import annotations

import csv
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta
from operator import attrgetter
from pathlib import Path
from typing import TypeVar

from welcome_mailer import templates
from welcome_mailer.contacts import DEFAULT_CHUNK_SIZE, ContactReader
from welcome_mailer.ledger import AcceptedAttempt, Ledger, OutgoingAttempt
from welcome_mailer.ledger.limits import QuotaExhausted, ReputationGuard, SendLimiter
from welcome_mailer.outcomes import OutcomeSource
from welcome_mailer.settings import DEFAULT_REQUESTS_IN_FLIGHT
from welcome_mailer.storage import describe, ensure_directory
from welcome_mailer.templates import WELCOME, TemplateSource
from welcome_mailer.transports import EmailProvider, SendResult
from welcome_mailer.unsubscribe import UnsubscribeSettings
from welcome_mailer.vocabulary import OutcomeEvent, utcnow

log = logging.getLogger(__name__)
T = TypeVar("T")
LEASE_RENEWAL_SECONDS = 60  # a long task renews its run's lease this often (leases last minutes)
# Throttled messages (the provider's rate or quota) are sent again after the provider's Retry-After, else
# after a backoff from THROTTLE_BACKOFF_SECONDS doubling up to THROTTLE_MAX_WAIT_SECONDS; a send task that
# has waited THROTTLE_PATIENCE_SECONDS in all fails (its retry sends the same attempts again).
THROTTLE_BACKOFF_SECONDS = 0.5
THROTTLE_MAX_WAIT_SECONDS = 60.0
THROTTLE_PATIENCE_SECONDS = 900.0
PROGRESS_LOG_SECONDS = 30  # a long delivery poke logs how far it is this often


def lease_keeper(ledger: Ledger, run_id: str) -> Callable[[], None]:
    """A function to call as often as convenient while a task works: it renews the run's lease at its first
    call, then whenever LEASE_RENEWAL_SECONDS (at most a quarter of the lease) have passed since. A task
    longer than the lease must not lose its contacts mid-way; a renewal is a committed write, not to be
    made at every 0.25 s poll."""
    interval = min(LEASE_RENEWAL_SECONDS, ledger.lease.total_seconds() / 4)
    renewed: float | None = None

    def keep() -> None:
        nonlocal renewed
        if renewed is None or time.monotonic() - renewed > interval:
            ledger.renew_lease(run_id)
            renewed = time.monotonic()

    return keep


def chunked(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def parse_file(
    ledger: Ledger,
    run_id: str,
    csv_path: Path,
    rejected_csv: Path,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    *,
    source: str | None = None,
    template: TemplateSource = WELCOME,
    unsubscribe: UnsubscribeSettings | None = None,
) -> dict:
    """Read the file in chunks: unique valid contacts go to the run's staging area, rejected rows to a CSV
    (a local Path or an ObjectStoragePath). ``source`` names the file in the results when ``csv_path`` is
    a local copy of it (an object on object storage).

    The run's ``template`` is checked first, its syntax and the columns it uses against the file's (raises
    TemplateError: nothing stored), then snapshot in the ledger (the first snapshot of a run stands); each
    contact keeps the other columns the snapshot uses, and one it cannot be rendered for is rejected."""
    started = time.time()
    unsubscribe = unsubscribe or UnsubscribeSettings.from_env()  # as the transports read it
    reader = ContactReader(csv_path, chunk_size)
    shown_file = source or str(csv_path)
    columns = reader.columns()
    # Checked before anything is stored: a retried parse after the files were mended snapshots the mended one.
    templates.compile_template(template, unsubscribe).check_columns(columns, shown_file)
    message = templates.compile_template(templates.take_snapshot(ledger.engine, run_id, template), unsubscribe)
    message.check_columns(columns, shown_file)  # a retried parse keeps the run's first snapshot
    ledger.clear_stage(run_id)  # a retried parse starts over
    ledger.record_source_file(run_id, shown_file)
    ensure_directory(rejected_csv.parent)
    with rejected_csv.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["line_no", "reason", "row"])
        for chunk in reader.chunks(message.columns):
            contacts, refused = message.screen(chunk.contacts)
            reader.stats.contacts -= len(refused)
            reader.stats.rejected += len(refused)
            ledger.stage(run_id, contacts, with_fields=bool(message.columns))
            rejected = sorted(chunk.rejected + refused, key=attrgetter("line_no")) if refused else chunk.rejected
            writer.writerows((r.line_no, r.reason, r.raw) for r in rejected)
            log.info(
                "parsed %s rows: %s contacts, %s duplicates, %s rejected",
                reader.stats.rows_read, reader.stats.contacts, reader.stats.duplicates_in_file, reader.stats.rejected,
            )  # fmt: skip
    stats = reader.stats
    if stats.encoding_warning:
        log.warning("%s", stats.encoding_warning)
    return {
        "csv_path": source or str(csv_path),
        "encoding": stats.encoding,
        "encoding_warning": stats.encoding_warning,
        "header_skipped": stats.header_skipped,
        "rows_read": stats.rows_read,
        "contacts": stats.contacts,
        "duplicates_in_file": stats.duplicates_in_file,
        "rejected": stats.rejected,
        "rejected_csv": describe(str(rejected_csv)),
        "template": message.source.name,
        "template_hash": message.source.hash,
        "seconds": round(time.time() - started, 3),
    }


def claim_contacts(
    ledger: Ledger,
    run_id: str,
    batch_size: int,
    max_batches: int,
    retry_failed_after: timedelta = timedelta(0),
    min_batch_contacts: int = 1,
) -> dict:
    started = time.time()
    # The contacts keep the other columns the run's template uses, for its sends and resends.
    with_fields = bool(templates.for_run(ledger.engine, run_id, UnsubscribeSettings.from_env()).columns)
    result = ledger.claim(run_id, batch_size, max_batches, retry_failed_after, min_batch_contacts, with_fields)
    if result.to_send >= GUARD_SHARED_COUNT_MESSAGES:  # a large run: its tasks share its counts from the first
        ledger.share_guard_counts(run_id, utcnow())
    log.info(
        "claimed %s of %s contacts (%s new, %s taken over); %s already contacted (of them %s failed less than "
        "%s ago: retried by a later run); %s held by other runs in progress (lease until %s); %s to send in %s "
        "batches of up to %s",
        result.owned, result.staged, result.claimed_new, result.taken_over,
        result.skipped - result.held_by_other_runs, result.failed_recently, retry_failed_after,
        result.held_by_other_runs, result.held_until, result.to_send, len(result.batches), result.batch_size,
    )  # fmt: skip
    return {
        "staged": result.staged,
        "claimed_new": result.claimed_new,
        "taken_over": result.taken_over,
        "failed_recently": result.failed_recently,
        "owned": result.owned,
        "skipped": result.skipped,
        "held_by_other_runs": result.held_by_other_runs,
        "held_until": result.held_until.isoformat() if result.held_until else None,  # naive UTC
        "to_send": result.to_send,
        "batch_size": result.batch_size,
        "batches": result.batches,
        "seconds": round(time.time() - started, 3),
        "finished": time.time(),
    }


GUARD_CHECK_SECONDS = 5.0  # how often a task asks whether the run was stopped, and at most how often it counts
# A count of the run's outcomes reads every message of the run (no index names an attempt's state: its
# outcome's update stays heap-only), 0.4 s at a million on SQLite, 1-2 s on Postgres. A large run's tasks
# share its counts (``Ledger.guard_count_due``): the next is due once this many times the last count's
# duration has passed, so counting takes at most 1/GUARD_COUNT_SPACING of the time (every 5 s, 8 send tasks
# of a 1M run counted nearly all the time and held Postgres's two cores), and of the tasks that find it due,
# the one that claims it makes it (``Ledger.claim_guard_count``: a run's 8 send tasks start together, and
# on Postgres at 1M each made its own count of 2.2 s at once: 24-32 counts, 53-109 s of the server's time
# in a run). A small run is counted by each task as it starts and then every GUARD_CHECK_SECONDS: a poke
# that just recorded a batch's bounces judges them at once.
GUARD_COUNT_SPACING = 50
# A large run: one of this many messages or more, from its claim on (a count over it takes about
# GUARD_SHARED_COUNT_CPU_SECONDS on SQLite, 0.1 s on Postgres), or any run whose count took either below.
GUARD_SHARED_COUNT_MESSAGES = 50_000
# A count this slow is a large run's (0.4 s at 1M on SQLite; 1-2 s on Postgres). A small run's that was this
# slow once (the database busy) has its next count spaced, then each task counts as it starts again.
GUARD_SHARED_COUNT_SECONDS = 0.25
# Or a count that took this much of the counting thread's CPU (SQLite counts in that thread; from about 50k
# messages: 100k take 0.045 s). Unlike wall time, CPU time leaves out the count's waits for the GIL and the
# disk, so a small run's count (600 messages: under 1 ms) practically never reaches it (a full garbage
# collection during the count could: the tasks freeze what they hold, task_memory.py) and its poke judges a
# batch's fresh bounces at once. On Postgres the server counts: the wall-clock rule decides there.
# Measured in docs/performance-history.md ("The guard's count spaced by its CPU time too").
GUARD_SHARED_COUNT_CPU_SECONDS = 0.02
# How long a claimed count keeps the run's other tasks from counting: far more than a count takes (2.2 s at a
# million on a busy Postgres); a count that raised hands its claim back, one whose task was killed lapses.
GUARD_COUNT_CLAIM_SECONDS = 60.0


def guard_keeper(ledger: Ledger, run_id: str, guard: ReputationGuard | None) -> Callable[[], bool]:
    """A function to call as often as convenient: True once the run must not send any more.

    At its first call, then every GUARD_CHECK_SECONDS, it reads whether the run was stopped (by any task)
    and when the run's next count is due (one row: None, now, unless the run is large). Then it works out
    the run's outcome shares (a count over the run's messages, ``count_if_due``) if the count is due. When
    the shares pass the guard's limits, it stops the run (``Ledger.stop_for_guard``: every contact it has
    not sent to is released for a later run) and says so in the task log."""
    checked: float | None = None
    stopped = False

    def must_stop() -> bool:
        nonlocal checked, stopped
        if guard is None or stopped:
            return stopped
        if checked is not None and time.monotonic() - checked < GUARD_CHECK_SECONDS:
            return False
        stopped, count_due_at = ledger.guard_state(run_id)
        figures = None if stopped else count_if_due(ledger, run_id, count_due_at)
        reason = None if figures is None else guard.verdict(figures)
        if reason is not None:
            released = ledger.stop_for_guard(run_id, reason, figures)
            log.error(
                "reputation guard: %s after %s outcomes (%s bounced, %s complained): the run stops sending; "
                "%s contacts it had not sent to are released for a later run",
                reason, figures["outcomes"], figures["bounced"], figures["complained"], released,
            )  # fmt: skip
            stopped = True
        checked = time.monotonic()
        return stopped

    return must_stop


def count_if_due(ledger: Ledger, run_id: str, count_due_at: datetime | None) -> dict | None:
    """The run's outcome figures (``Ledger.outcome_figures``) when its count is due for this task: always
    for a small run (``count_due_at`` None); for a large one, once due, if this task's claim takes it (None
    otherwise). A large run's count sets the run's next one GUARD_COUNT_SPACING times its duration later; a
    count that finds the run small leaves each task to count as it starts."""
    now = utcnow()
    shared = count_due_at is not None
    claim_until = now + timedelta(seconds=GUARD_COUNT_CLAIM_SECONDS)
    if shared and (now < count_due_at or not ledger.claim_guard_count(run_id, now, claim_until)):
        return None  # not due yet, or another task of the run is making it
    counting, counting_cpu = time.monotonic(), time.thread_time()
    try:
        figures = ledger.outcome_figures(run_id)
    except Exception:
        if shared:  # hand the claim back: the next task to look makes the count
            ledger.guard_count_due(run_id, count_due_at)
        raise
    took, took_cpu = time.monotonic() - counting, time.thread_time() - counting_cpu
    if (
        figures["messages"] >= GUARD_SHARED_COUNT_MESSAGES
        or took >= GUARD_SHARED_COUNT_SECONDS
        or took_cpu >= GUARD_SHARED_COUNT_CPU_SECONDS
    ):
        ledger.guard_count_due(run_id, now + timedelta(seconds=GUARD_COUNT_SPACING * took))
    elif shared:
        ledger.guard_count_due(run_id, None)
    return figures


class StillThrottled(RuntimeError):
    """The provider kept throttling a send task's messages for THROTTLE_PATIENCE_SECONDS: none of them was
    sent and none spent an attempt; the task's retry sends the same attempts again."""


def send_batch(
    ledger: Ledger,
    transport: EmailProvider,
    run_id: str,
    batch_no: int,
    request_size: int,
    requests_in_flight: int = DEFAULT_REQUESTS_IN_FLIGHT,
    unsubscribe: UnsubscribeSettings | None = None,
    *,
    limiter: SendLimiter | None = None,
    quota_linger_seconds: float = 5.0,
    guard: ReputationGuard | None = None,
    must_stop: Callable[[], bool] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> dict:
    """Send one batch: record the attempts, then send them in requests of ``request_size``.

    ``requests_in_flight`` requests are under way while this thread records the replies in request order:
    the provider's work and the ledger's overlap instead of taking turns. The transport
    keeps its own connection limit (httpx's pool; the SMTP transport's ``max_connections``): requests
    beyond it wait for a connection. Every attempt is recorded before the first request, so a request
    that was sent but not recorded (a failure in between) is re-sent by the retry with the same
    idempotency key, through an idempotent transport: the provider returns the message it already
    accepted. Through a transport without idempotency each request's attempts are marked dispatched just
    before it goes, and such an attempt is never sent again (unconfirmed). After a failed request nothing
    new is sent; the replies of requests already under way are still recorded, then the failure raised.

    Messages the provider throttled (its rate or quota: nothing was sent) are sent again, the same
    attempts, once every request has been answered, after the provider's Retry-After or a backoff.

    With a ``limiter`` (the provider's limits, ``welcome_mailer.ledger.limits``) each request waits for its
    send slot first, shared with every other send task, and carries no more than the limiter allows. When
    the rolling quota is used up for longer than ``quota_linger_seconds``, the task stops: what it has not
    sent stays the run's, due (``Ledger.count_unsent``), for resend_blocked to send once the window frees
    (the result's ``quota_resumes_at``); it never becomes failed. Once the reputation ``guard`` stops the
    run (this task's check or another's), no further request goes out. ``must_stop``: the caller's own
    ``guard_keeper`` instead of one of this batch's (resend_blocked sends many batches a poke: one count of
    the run's outcomes every GUARD_CHECK_SECONDS, not one per batch)."""
    started = time.time()
    # The run's snapshot, compiled once per process; unsubscribe_url as the transports read it.
    message = templates.for_run(ledger.engine, run_id, unsubscribe or UnsubscribeSettings.from_env())
    attempts = ledger.start_attempts(
        run_id, batch_no, resend_unconfirmed=transport.idempotent, with_fields=bool(message.columns)
    )
    accepted = refused = unconfirmed = throttled_requests = 0
    throttled: list[OutgoingAttempt] = []  # this pass's throttled attempts, for the next pass
    retry_after = 0.0
    quota_held: list[OutgoingAttempt] = []  # not sent: the quota is used up (QuotaExhausted)
    quota: QuotaExhausted | None = None

    must_stop = must_stop or guard_keeper(ledger, run_id, guard)

    def send(chunk: Sequence[OutgoingAttempt]) -> list[SendResult] | QuotaExhausted | None:
        if must_stop():
            return None  # released by the guard: a later run sends it
        # Rendered before its send slot, so that the request leaves as the slot starts.
        messages, unrendered = message.messages([(a.email, a.name, a.idempotency_key, a.fields) for a in chunk])
        if limiter is not None:
            try:
                limiter.acquire(len(chunk))
            except QuotaExhausted as exc:
                return exc
        if not transport.idempotent:
            ledger.mark_dispatched(run_id, chunk)  # a lost reply now parks the chunk as unconfirmed, never resent
        if not unrendered:
            return transport.send_batch(messages)
        # Never sent half-rendered: refused, like a provider's refusal (only a template whose need depends on
        # a value's content gets here; parse rejected the rest).
        sent = iter(transport.send_batch(messages) if messages else [])
        return [
            SendResult(a.email, None, unrendered[n]) if n in unrendered else next(sent) for n, a in enumerate(chunk)
        ]

    keep_lease = lease_keeper(ledger, run_id)

    def record(chunk: Sequence[OutgoingAttempt], results: list[SendResult] | QuotaExhausted | None) -> None:
        nonlocal accepted, refused, unconfirmed, throttled_requests, retry_after, quota
        keep_lease()
        if results is None:
            return
        if isinstance(results, QuotaExhausted):
            quota_held.extend(chunk)
            quota = results if quota is None or results.resumes_at > quota.resumes_at else quota
            return
        pairs = list(zip(chunk, results, strict=True))
        held = [(a, r) for a, r in pairs if r.throttled]
        if held:  # nothing of these went out: the same attempts again, later (never a new email)
            throttled_requests += 1
            throttled.extend(a for a, _ in held)
            retry_after = max([retry_after, *(r.retry_after or 0.0 for _, r in held)])
            if not transport.idempotent:
                ledger.hand_back(run_id, [a for a, _ in held])
            pairs = [(a, r) for a, r in pairs if not r.throttled]
        # Handed over without a reply (only through a transport without idempotency): never resent.
        lost = [a for a, r in pairs if r.unconfirmed]
        ledger.mark_unconfirmed(run_id, lost)
        answered = [(a, r) for a, r in pairs if not r.unconfirmed]
        # Outcomes the transport learnt at once (an SMTP 4xx: blocked) go through the one ledger operation,
        # before the sends are recorded: they wait in the inbox, and record_sent applies them in its own
        # transaction, so no crash can leave such a message "sent" (and later settled as delivered).
        ledger.record_outcomes(
            OutcomeEvent(r.outcome, r.message_id, a.idempotency_key, source="send_reply", detail=r.error)
            for a, r in answered
            if r.outcome and r.message_id
        )
        ledger.record_sent(run_id, [AcceptedAttempt(a.email, a.attempt, r.message_id, r.error) for a, r in answered])
        chunk_refused = sum(1 for _, r in answered if r.message_id is None)
        refused += chunk_refused
        unconfirmed += len(lost)
        accepted += len(answered) - chunk_refused

    in_flight: deque[tuple[Sequence[OutgoingAttempt], Future]] = deque()
    requests = ThreadPoolExecutor(max_workers=requests_in_flight, thread_name_prefix="esp-send")

    def record_oldest() -> None:
        chunk, request = in_flight.popleft()
        try:
            results = request.result()
        except BaseException:
            requests.shutdown(cancel_futures=True)  # send nothing more; wait for the requests under way
            for later_chunk, later in in_flight:
                if not later.cancelled() and later.exception() is None:
                    record(later_chunk, later.result())  # sent: recorded, so no retry takes them for lost
            raise
        record(chunk, results)

    waited, quota_waited, backoff = 0.0, 0.0, THROTTLE_BACKOFF_SECONDS
    # The limiter's figures so far: resend_blocked passes one limiter to each batch of its poke.
    rate_waited_before, late_before = (limiter.rate_wait_seconds, limiter.late_slots) if limiter else (0.0, 0)
    request_size = min(request_size, transport.max_batch, (limiter and limiter.request_cap) or request_size)
    try:
        while attempts:
            for chunk in chunked(attempts, request_size):
                in_flight.append((chunk, requests.submit(send, chunk)))
                if len(in_flight) > requests_in_flight:
                    record_oldest()
            while in_flight:
                record_oldest()
            attempts, throttled[:] = list(throttled), []
            if must_stop():
                break
            if quota is not None:  # the quota is used up: wait here a little, else stop and leave them due
                if quota.wait_seconds > quota_linger_seconds:
                    ledger.pause_for_quota(run_id, quota.resumes_at)
                    log.info("%s (%s messages of this batch wait for it)", quota, len(attempts) + len(quota_held))
                    break
                log.info("the quota frees in %.1f s: %s messages wait for it", quota.wait_seconds, len(quota_held))
                sleep(quota.wait_seconds)
                attempts, quota_held[:], quota_waited, quota = (
                    attempts + quota_held,
                    [],
                    quota_waited + quota.wait_seconds,
                    None,
                )
                continue
            if attempts:
                wait = min(retry_after or backoff, THROTTLE_MAX_WAIT_SECONDS)
                if waited + wait > THROTTLE_PATIENCE_SECONDS:
                    raise StillThrottled(
                        f"the provider throttled {len(attempts)} messages for {waited:.0f} s: none of them was "
                        "sent, none spent an attempt; the task's retry sends them"
                    )
                log.info("the provider throttled %s messages: the same ones again in %.1f s", len(attempts), wait)
                sleep(wait)
                waited, backoff, retry_after = waited + wait, min(backoff * 2, THROTTLE_MAX_WAIT_SECONDS), 0.0
    finally:
        requests.shutdown(cancel_futures=True)  # after a failure in recording too
        rate_wait = limiter.rate_wait_seconds - rate_waited_before if limiter is not None else 0.0
        if limiter is not None and limiter.late_slots > late_before:
            log.info(
                "%s send slots let go: this task was late for them (a busy machine)", limiter.late_slots - late_before
            )
        ledger.add_limit_figures(
            run_id,
            throttled_requests=throttled_requests,
            throttle_wait_seconds=waited,
            rate_wait_seconds=rate_wait,
            quota_wait_seconds=quota_waited,
        )
    if quota is None and accepted:
        ledger.end_quota_pause(run_id)
    return {
        "sent": accepted,
        "refused": refused,
        "unconfirmed": unconfirmed,
        "throttled_requests": throttled_requests,
        "throttle_wait_seconds": round(waited, 3),
        "rate_wait_seconds": round(rate_wait, 3),
        "quota_wait_seconds": round(quota_waited, 3),
        "unsent": len(attempts) + len(quota_held) if quota is not None else 0,
        "quota_resumes_at": quota.resumes_at.isoformat() if quota is not None else None,  # naive UTC
        "started": started,
        "finished": time.time(),
    }


def collect_outcomes(
    ledger: Ledger, sources: Sequence[OutcomeSource], run_id: str, awaiting: int | None = None
) -> tuple[int, int]:
    """Poll each source about the run's messages without an outcome and record what they know, then ask
    the ledger (where pushed outcomes land too) how many are still waiting. Returns (recorded, left).

    ``awaiting``: the last call's ``left``, when the run has sent nothing since (it can only have fallen):
    the first source is polled without counting again (a count reads an index entry per message of the
    run). A source is not polled once nothing waits."""
    recorded = 0
    for n, source in enumerate(sources):
        if not (awaiting if n == 0 and awaiting is not None else ledger.count_awaiting_outcome(run_id)):
            break
        # Streamed end to end: pending messages read a page at a time, outcomes recorded in bounded
        # transactions as the source yields them.
        recorded += ledger.record_outcomes(source.poll(ledger.pending_messages(run_id))).applied
        # A source that consumes what it read (a bounce mailbox) files it once the ledger has it.
        acknowledge = getattr(source, "acknowledge", None)
        if acknowledge is not None:
            acknowledge()
    return recorded, ledger.count_awaiting_outcome(run_id)


def await_delivery(
    ledger: Ledger,
    sources: Sequence[OutcomeSource],
    run_id: str,
    max_attempts: int,
    *,
    linger_seconds: float = 0.0,
    poll_seconds: float = 0.25,
    max_seconds: float = 600.0,
    guard: ReputationGuard | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """One poke of the delivery sensor: record what the sources know, then say whether waiting is over:
    no message of the run lacks an outcome, or blocked contacts can be resent (resend_blocked then takes
    over the waiting, so resends overlap the slow outcomes instead of queuing behind them).

    While outcomes keep arriving, the poke polls again every ``poll_seconds``: it gives the worker slot back
    (returns False) once ``linger_seconds`` pass with none (no longer than a reschedule would take anyway),
    or after ``max_seconds`` in all. A reschedule costs a task start; a million-row run's outcomes arrive
    for minutes, and were recorded a poke interval and a task start apart. The task log shows the count
    every PROGRESS_LOG_SECONDS and when the poke ends."""
    started = last_progress = last_log = time.monotonic()
    recorded, polls, fewest_left, left = 0, 0, None, None
    keep_lease = lease_keeper(ledger, run_id)
    must_stop = guard_keeper(ledger, run_id, guard)
    while True:
        keep_lease()
        resolved, left = collect_outcomes(ledger, sources, run_id, awaiting=left)  # the run's sends are over
        must_stop()  # the reputation guard, on the outcomes known so far
        resendable = ledger.count_resendable(run_id, max_attempts)
        recorded, polls, now = recorded + resolved, polls + 1, time.monotonic()
        if fewest_left is None or left < fewest_left:
            fewest_left, last_progress = left, now
        # Contacts a send task left for the quota: resend_blocked sends them once the window frees.
        done = left == 0 or resendable > 0 or ledger.count_unsent(run_id) > 0
        ending = done or now - last_progress >= linger_seconds or now - started + poll_seconds > max_seconds
        if ending or now - last_log >= PROGRESS_LOG_SECONDS:
            log.info(
                "%s outcomes recorded in %s polls; %s messages still without one; %s blocked contacts",
                recorded, polls, left, resendable,
            )  # fmt: skip
            last_log = now
        if ending:
            return done
        sleep(poll_seconds)


def resend_blocked(
    ledger: Ledger,
    transport: EmailProvider,
    sources: Sequence[OutcomeSource],
    run_id: str,
    *,
    max_attempts: int,
    batch_size: int,
    max_batches: int,
    backoff_seconds: float,
    linger_seconds: float,
    poll_seconds: float,
    requests_in_flight: int = DEFAULT_REQUESTS_IN_FLIGHT,
    limiter: SendLimiter | None = None,
    guard: ReputationGuard | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """One poke of the resend phase: record outcomes, and send a NEW email to every blocked contact with
    attempts left whose backoff (counted from when it was reported blocked) is over. Returns True once
    nothing is left to resend or waiting for an outcome.

    Each contact is resent as soon as its own backoff ends, with no lock-step rounds. The poke keeps going
    while the next resend is due within ``linger_seconds`` (no longer than a reschedule would take anyway),
    and gives the worker slot back (returns False) when only outcomes or longer backoffs are left to wait for.
    """
    keep_lease = lease_keeper(ledger, run_id)
    must_stop = guard_keeper(ledger, run_id, guard)
    left = None  # the last poll's count, while nothing was sent since
    while True:
        keep_lease()
        _, left = collect_outcomes(ledger, sources, run_id, awaiting=left)
        must_stop()  # a stopped run has released what it has not sent: nothing is requeued below
        now = utcnow()
        batches = ledger.requeue_blocked(
            run_id, max_attempts, now - timedelta(seconds=backoff_seconds), batch_size, max_batches
        )
        resumes_at = ledger.quota_pause(run_id)
        if batches and resumes_at is not None and (resumes_at - now).total_seconds() > linger_seconds:
            log.info(
                "the provider's quota is used up: %s contacts wait, sending goes on at %s UTC",
                ledger.count_unsent(run_id),
                resumes_at,
            )
            return False  # the worker slot is given back while the window frees
        if batches:
            results = [
                send_batch(
                    ledger, transport, run_id, b, batch_size, requests_in_flight,
                    limiter=limiter, quota_linger_seconds=linger_seconds, must_stop=must_stop, sleep=sleep,
                )
                for b in batches
            ]  # fmt: skip
            left = None  # sent: the next poll counts again
            log.info(
                "sent %s messages (new emails to blocked contacts, or ones the quota held)",
                sum(r["sent"] for r in results),
            )
            sleep(poll_seconds)  # their outcomes are often back at once
            continue
        earliest_blocked = ledger.earliest_resendable(run_id, max_attempts)
        in_flight = ledger.count_in_flight(run_id)
        if earliest_blocked is None:
            if not in_flight:
                return True
            log.info("waiting for the outcomes of %s messages", in_flight)
            return False
        due_in = (earliest_blocked - now).total_seconds() + backoff_seconds
        if due_in > linger_seconds:
            log.info("waiting for the outcomes of %s messages; the next resend is due in %.0f s", in_flight, due_in)
            return False
        sleep(max(due_in, poll_seconds))
