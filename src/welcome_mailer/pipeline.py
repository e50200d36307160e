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
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

from welcome_mailer.contacts import DEFAULT_CHUNK_SIZE, ContactReader
from welcome_mailer.greeting import SUBJECT, welcome_text
from welcome_mailer.ledger import AcceptedAttempt, Ledger, OutgoingAttempt
from welcome_mailer.outcomes import OutcomeSource
from welcome_mailer.settings import DEFAULT_REQUESTS_IN_FLIGHT
from welcome_mailer.storage import describe, ensure_directory
from welcome_mailer.transports import EmailProvider, OutgoingMessage, SendResult
from welcome_mailer.vocabulary import OutcomeEvent, utcnow

log = logging.getLogger(__name__)
T = TypeVar("T")
LEASE_RENEWAL_SECONDS = 60  # a long task renews its run's lease this often (leases last minutes)
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
) -> dict:
    """Read the file in chunks: unique valid contacts go to the run's staging area, rejected rows to a CSV
    (a local Path or an ObjectStoragePath). ``source`` names the file in the results when ``csv_path`` is
    a local copy of it (an object on object storage)."""
    started = time.time()
    ledger.clear_stage(run_id)  # a retried parse starts over
    ledger.record_source_file(run_id, source or str(csv_path))
    reader = ContactReader(csv_path, chunk_size)
    ensure_directory(rejected_csv.parent)
    with rejected_csv.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["line_no", "reason", "row"])
        for chunk in reader:
            ledger.stage(run_id, chunk.contacts)
            writer.writerows((r.line_no, r.reason, r.raw) for r in chunk.rejected)
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
    result = ledger.claim(run_id, batch_size, max_batches, retry_failed_after, min_batch_contacts)
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


def send_batch(
    ledger: Ledger,
    transport: EmailProvider,
    run_id: str,
    batch_no: int,
    request_size: int,
    requests_in_flight: int = DEFAULT_REQUESTS_IN_FLIGHT,
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
    new is sent; the replies of requests already under way are still recorded, then the failure raised."""
    started = time.time()
    attempts = ledger.start_attempts(run_id, batch_no, resend_unconfirmed=transport.idempotent)
    accepted = refused = unconfirmed = 0

    def send(chunk: Sequence[OutgoingAttempt]) -> list[SendResult]:
        if not transport.idempotent:
            ledger.mark_dispatched(run_id, chunk)  # a lost reply now parks the chunk as unconfirmed, never resent
        return transport.send_batch(
            [OutgoingMessage(a.email, SUBJECT, welcome_text(a.name), a.idempotency_key, a.name) for a in chunk]
        )

    keep_lease = lease_keeper(ledger, run_id)

    def record(chunk: Sequence[OutgoingAttempt], results: list[SendResult]) -> None:
        nonlocal accepted, refused, unconfirmed
        keep_lease()
        pairs = list(zip(chunk, results, strict=True))
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

    try:
        for chunk in chunked(attempts, min(request_size, transport.max_batch)):
            in_flight.append((chunk, requests.submit(send, chunk)))
            if len(in_flight) > requests_in_flight:
                record_oldest()
        while in_flight:
            record_oldest()
    finally:
        requests.shutdown(cancel_futures=True)  # after a failure in recording too
    return {
        "sent": accepted,
        "refused": refused,
        "unconfirmed": unconfirmed,
        "started": started,
        "finished": time.time(),
    }


def collect_outcomes(ledger: Ledger, sources: Sequence[OutcomeSource], run_id: str) -> tuple[int, int]:
    """Poll each source about the run's messages without an outcome and record what they know, then ask
    the ledger (where pushed outcomes land too) how many are still waiting. Returns (recorded, left)."""
    recorded = 0
    for source in sources:
        if not ledger.count_awaiting_outcome(run_id):
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
    recorded, polls, fewest_left = 0, 0, None
    keep_lease = lease_keeper(ledger, run_id)
    while True:
        keep_lease()
        resolved, left = collect_outcomes(ledger, sources, run_id)
        resendable = ledger.count_resendable(run_id, max_attempts)
        recorded, polls, now = recorded + resolved, polls + 1, time.monotonic()
        if fewest_left is None or left < fewest_left:
            fewest_left, last_progress = left, now
        done = left == 0 or resendable > 0
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
    while True:
        keep_lease()
        collect_outcomes(ledger, sources, run_id)
        now = utcnow()
        batches = ledger.requeue_blocked(
            run_id, max_attempts, now - timedelta(seconds=backoff_seconds), batch_size, max_batches
        )
        if batches:
            sent = sum(
                send_batch(ledger, transport, run_id, b, batch_size, requests_in_flight)["sent"] for b in batches
            )
            log.info("resent %s blocked contacts: a new email each", sent)
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
