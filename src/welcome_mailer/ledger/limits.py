"""The provider's limits, kept in the ledger's database so that every send task of every run (any worker,
any process, any machine) honours them together, with no process of their own to run.

- **The rate** (``max_messages_per_second``): a send reserves its slot before it goes. One row per
  provider account holds when the next free slot starts; a reservation of n messages moves it on by
  n / rate in one atomic upsert (a row lock on Postgres, the write lock on SQLite), and the sender sleeps
  until its slot starts. No burst credit: slots never start before "now", so an idle account does not
  save up a burst. Reservations are small (``request_cap``: a 25th of a second's messages), and a
  sender more than LATE_SECONDS past its slot's start when it would go (a busy machine: it woke late, or
  the reservation's reply reached it late) lets its slot go and takes the next free one instead of
  crowding the next slots' messages: the messages of any one-second window stay within the rate
  (measured: tests/integration/test_send_limits.py, tests/stack/test_limits_stack.py).
- **The rolling quota** (``max_messages_per_24h``, over ``quota_window_seconds``): in the same
  transaction, the messages reserved in the last window (plus QUOTA_MARGIN_SECONDS) are counted (time
  buckets, a 1440th of the window each); a reservation that would pass the quota is rolled back and
  raises ``QuotaExhausted`` with the time the window frees enough for it.
- Times come from the database's clock, so workers whose clocks differ still share one schedule.
- ``RunLimits`` (a part of ``Ledger``): each run's figures, for its report: throttled requests, the
  time spent waiting for the rate, after throttling and for the quota; and the reputation guard
  (``ReputationGuard``): a run whose bounce or complaint share passes its limit stops sending, and every
  contact it has not sent to is released (``stop_for_guard``) for a later run.
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, Float, and_, cast, delete, func, literal, or_, select, text, update

from welcome_mailer.ledger import bulk
from welcome_mailer.ledger.engine import READ_SNAPSHOT
from welcome_mailer.ledger.queries import due_contacts
from welcome_mailer.ledger.rules import CLAIMED, PENDING, REFUSED, SENDING
from welcome_mailer.ledger.schema import (
    ledger_runs,
    run_limits,
    send_attempts,
    send_limits,
    send_quota_usage,
    sent_contacts,
)
from welcome_mailer.vocabulary import BLOCKED, BOUNCED, COMPLAINED, DELIVERED, utcnow

DAY_SECONDS = 86400.0
QUOTA_BUCKETS = 1440  # per window: a minute's buckets for a day's quota
# A message counts against the quota for a window, and this much longer, from the end of its bucket: its
# slot is reserved before it reaches the provider, whose clock starts at its acceptance.
QUOTA_MARGIN_SECONDS = 1.0
SLOTS_PER_SECOND = 25  # a reservation holds at most a 25th of a second's messages
LATE_SECONDS = 0.04  # a sender this much past its slot's start when it would go takes a new one
MAX_RETAKES = 3  # ...this many times at most, then it goes (a machine too busy to be on time still sends)
CLOCK_SAMPLES = 64  # replies whose clock gap places a slot on a sender's own clock
OUTCOME_STATES = (DELIVERED, BOUNCED, REFUSED, COMPLAINED, BLOCKED)  # an attempt's states once it has one
FIGURES = ("throttled_requests", "throttle_wait_seconds", "rate_wait_seconds", "quota_wait_seconds")


@dataclass(frozen=True)
class ProviderLimits:
    """A provider account's limits, from its connection's extras (None: no limit)."""

    key: str  # the account: the connection's id
    max_messages_per_second: float | None = None
    max_messages_per_24h: int | None = None
    quota_window_seconds: float = DAY_SECONDS  # shorter only in tests

    def __post_init__(self) -> None:
        if self.max_messages_per_second is not None and self.max_messages_per_second <= 0:
            raise ValueError("max_messages_per_second must be above 0 (leave it out for no limit)")
        if self.max_messages_per_24h is not None and self.max_messages_per_24h < 1:
            raise ValueError("max_messages_per_24h must be at least 1 (leave it out for no limit)")
        if self.quota_window_seconds <= 0:
            raise ValueError("quota_window_seconds must be above 0")

    @classmethod
    def from_extra(cls, key: str, extra: dict) -> ProviderLimits:
        """``max_messages_per_second``, ``max_messages_per_24h`` and ``quota_window_seconds`` (tests) of a
        connection's extras; empty or absent means no limit."""

        def number(name: str, kind: type) -> float | int | None:
            value = extra.get(name)
            return None if value in (None, "") else kind(value)

        return cls(
            key,
            number("max_messages_per_second", float),
            number("max_messages_per_24h", int),
            number("quota_window_seconds", float) or DAY_SECONDS,
        )

    @property
    def limited(self) -> bool:
        return self.max_messages_per_second is not None or self.max_messages_per_24h is not None


@dataclass(frozen=True)
class ReputationGuard:
    """Per run: once ``min_outcomes`` of its messages have an outcome, a bounced share above
    ``max_bounce_rate`` or a complained share above ``max_complaint_rate`` stops it. 0 turns a limit off."""

    min_outcomes: int = 200
    max_bounce_rate: float = 0.2
    max_complaint_rate: float = 0.005

    def verdict(self, figures: dict) -> str | None:
        """Why the run must stop (None: it may go on), from ``RunLimits.outcome_figures``."""
        if figures["outcomes"] < max(self.min_outcomes, 1):
            return None
        if self.max_bounce_rate and figures["bounce_rate"] > self.max_bounce_rate:
            return f"bounce rate {figures['bounce_rate']:.1%} > {self.max_bounce_rate:.1%}"
        if self.max_complaint_rate and figures["complaint_rate"] > self.max_complaint_rate:
            return f"complaint rate {figures['complaint_rate']:.2%} > {self.max_complaint_rate:.2%}"
        return None


class QuotaExhausted(Exception):
    """The rolling quota has no room for these messages until ``resumes_at`` (naive UTC)."""

    def __init__(self, resumes_at: datetime, wait_seconds: float, quota: int) -> None:
        super().__init__(f"the provider's quota of {quota} messages per window is used up until {resumes_at:%c} UTC")
        self.resumes_at = resumes_at
        self.wait_seconds = wait_seconds


def _database_now(conn):
    """Seconds since the epoch by the database's clock."""
    if bulk.is_postgres(conn):
        return cast(func.extract("epoch", func.clock_timestamp()), Float)
    return (func.julianday("now") - 2440587.5) * 86400.0


class SendLimiter:
    """One send task's way to its provider's limits; ``acquire`` before each request."""

    def __init__(self, engine: Engine, limits: ProviderLimits, sleep: Callable[[float], None] = time.sleep) -> None:
        self.engine = engine
        self.limits = limits
        self.sleep = sleep
        self.rate_wait_seconds = 0.0  # slept for send slots, in all
        self.late_slots = 0  # slots let go because the sender was late for them
        self._clock_gaps: deque[float] = deque(maxlen=CLOCK_SAMPLES)  # this clock minus the database's, a reply

    @property
    def request_cap(self) -> int | None:
        """The most messages one request may carry (None: no cap)."""
        rate = self.limits.max_messages_per_second
        return None if rate is None else max(1, int(rate // SLOTS_PER_SECOND))

    def acquire(self, count: int) -> float:
        """Reserve ``count`` messages and sleep until their slot starts (returns the seconds slept), or
        raise QuotaExhausted (nothing reserved).

        A sender more than LATE_SECONDS past its slot's start when it would go lets the slot go and takes a
        new one (at most MAX_RETAKES times, then it goes): sent late, its messages would crowd the next
        slots'. Late is by the slot's start on this process's clock (``_local_slot_start``), so a
        reservation's reply that reached it late (a busy machine: its process not scheduled, a slow commit)
        counts, not only a late wake from the sleep; a wait for the account's row lock does not (the
        database reads its clock once it holds the lock). The quota counts the messages once: a retake
        reserves a slot of the rate only (its quota bucket is the first slot's, a few ms earlier)."""
        waited = 0.0
        for retake in range(MAX_RETAKES + 1):
            start, wait = self.reserve(count, count_quota=retake == 0)
            if wait > 0:
                self.sleep(wait)
                waited += wait
            late = time.monotonic() - self._local_slot_start(start)
            if not self.limits.max_messages_per_second or late <= LATE_SECONDS or retake == MAX_RETAKES:
                break
            self.late_slots += 1
        self.rate_wait_seconds += waited
        return waited

    def _local_slot_start(self, start: float) -> float:
        """When a slot starting at ``start`` (the database's clock) starts on this process's monotonic
        clock: by the smallest gap between the two clocks seen in the last CLOCK_SAMPLES replies (the
        fastest reply's: a slow one's gap includes its delay). Clocks that differ between machines cancel
        out; a stepped database clock is forgotten after CLOCK_SAMPLES reservations."""
        return start + min(self._clock_gaps)

    def reserve(self, count: int, *, count_quota: bool = True) -> tuple[float, float]:
        """Reserve ``count`` messages; returns when their slot starts (the database's clock, seconds since
        the epoch) and the seconds until then. ``count_quota``: False for messages the quota already
        counted (``acquire``'s retake)."""
        limits = self.limits
        rate = limits.max_messages_per_second
        span = count / rate if rate else 0.0
        with self.engine.begin() as conn:
            if bulk.is_postgres(conn):
                # A lost reservation (a crash right after) costs a slot, nothing more: no WAL flush to wait
                # for while the account's row is locked (under a busy disk, that wait was the send rate).
                conn.execute(text("SET LOCAL synchronous_commit = off"))
            now = _database_now(conn)
            insert = bulk.dialect_insert(conn, send_limits).values(limit_key=limits.key, next_slot_at=now + span)
            later = func.greatest if bulk.is_postgres(conn) else func.max
            upsert = insert.on_conflict_do_update(
                index_elements=[send_limits.c.limit_key],
                set_={"next_slot_at": later(send_limits.c.next_slot_at, now) + span},
            ).returning(send_limits.c.next_slot_at, now)
            next_slot, database_now = conn.execute(upsert).one()  # the account's row is locked from here
            self._clock_gaps.append(time.monotonic() - database_now)
            start = next_slot - span
            if limits.max_messages_per_24h is not None and count_quota:
                self._take_quota(conn, count, start, database_now)  # raises: the transaction rolls back
        return start, start - database_now

    def _take_quota(self, conn, count: int, start: float, now: float) -> None:
        limits = self.limits
        bucket_seconds = limits.quota_window_seconds / QUOTA_BUCKETS
        bucket = math.floor(start / bucket_seconds)
        key = send_quota_usage.c.limit_key == limits.key
        counted = limits.quota_window_seconds + QUOTA_MARGIN_SECONDS
        oldest = math.floor((start - counted) / bucket_seconds)  # buckets that still count against the quota
        conn.execute(delete(send_quota_usage).where(key, send_quota_usage.c.bucket_no < oldest))
        used = conn.execute(
            select(send_quota_usage.c.bucket_no, send_quota_usage.c.messages).where(key).order_by("bucket_no")
        ).all()
        room = limits.max_messages_per_24h - sum(messages for _, messages in used)
        if count > room:
            freed = 0
            frees_at = start + counted  # a request larger than the quota: a window on
            for bucket_no, messages in used:
                freed += messages
                if count <= room + freed:
                    frees_at = (bucket_no + 1) * bucket_seconds + counted
                    break
            wait = max(frees_at - now, bucket_seconds)
            raise QuotaExhausted(utcnow() + timedelta(seconds=wait), wait, limits.max_messages_per_24h)
        insert = bulk.dialect_insert(conn, send_quota_usage).values(
            limit_key=limits.key, bucket_no=bucket, messages=count
        )
        conn.execute(
            insert.on_conflict_do_update(
                index_elements=[send_quota_usage.c.limit_key, send_quota_usage.c.bucket_no],
                set_={"messages": send_quota_usage.c.messages + literal(count)},
            )
        )


def _upsert_run_limits(conn, run_id: str, values: dict, changes: dict, where=None):
    """The run's row of ``run_limits``: inserted with ``values`` (its FIGURES 0 unless given), or, when it
    exists, updated with ``changes`` (only where ``where`` holds). Returns the statement's result."""
    insert = bulk.dialect_insert(conn, run_limits).values(run_id=run_id, **({name: 0 for name in FIGURES} | values))
    return conn.execute(insert.on_conflict_do_update(index_elements=[run_limits.c.run_id], set_=changes, where=where))


class RunLimits:
    """Each run's figures about the provider's limits, and its pauses for the quota (a part of ``Ledger``)."""

    engine: Engine

    def outcome_figures(self, run_id: str) -> dict:
        """The run's messages, those with an outcome, and the shares of these bounced (refused at once
        included) and complained. A read snapshot (SQLite: no write lock held while it reads a large run's
        messages, nor waited for: the keeper spaces the run's counts by how long this took)."""
        with self.engine.connect() as conn:
            conn.execution_options(**{READ_SNAPSHOT: True})
            counts = dict(
                conn.execute(
                    select(send_attempts.c.status, func.count())
                    .where(send_attempts.c.run_id == run_id)
                    .group_by(send_attempts.c.status)
                ).all()
            )
        outcomes = sum(n for status, n in counts.items() if status in OUTCOME_STATES)
        bounced, complained = counts.get(BOUNCED, 0) + counts.get(REFUSED, 0), counts.get(COMPLAINED, 0)
        return {
            "messages": sum(counts.values()),
            "outcomes": outcomes,
            "bounced": bounced,
            "complained": complained,
            "bounce_rate": round(bounced / outcomes, 4) if outcomes else 0.0,
            "complaint_rate": round(complained / outcomes, 4) if outcomes else 0.0,
        }

    def guard_state(self, run_id: str) -> tuple[bool, datetime | None]:
        """Whether the reputation guard stopped the run, and when the run's outcomes are next due to be
        counted for it (naive UTC; None: now). One row."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(run_limits.c.guard_stopped_at, run_limits.c.guard_count_due_at).where(
                    run_limits.c.run_id == run_id
                )
            ).one_or_none()
        return (False, None) if row is None else (row.guard_stopped_at is not None, row.guard_count_due_at)

    def guard_count_due(self, run_id: str, due_at: datetime | None) -> None:
        """The run's next count is due at ``due_at`` (naive UTC), for every task of the run; None: each task
        counts as it starts."""
        with self.engine.begin() as conn:
            _upsert_run_limits(conn, run_id, {"guard_count_due_at": due_at}, {"guard_count_due_at": due_at})

    def share_guard_counts(self, run_id: str, now: datetime) -> None:
        """The run's tasks share its counts from ``now`` on (a large run's claim), unless they already do."""
        with self.engine.begin() as conn:
            due = {"guard_count_due_at": now}
            _upsert_run_limits(conn, run_id, due, due, where=run_limits.c.guard_count_due_at.is_(None))

    def claim_guard_count(self, run_id: str, now: datetime, until: datetime) -> bool:
        """Take the run's shared count, due by ``now``, for the calling task, moving it on to ``until``
        (naive UTC): True for the one task whose claim moved it, False for every other (its count was
        claimed first, or is not due). One conditional update of the run's row."""
        with self.engine.begin() as conn:
            claimed = conn.execute(
                update(run_limits)
                .where(run_limits.c.run_id == run_id, run_limits.c.guard_count_due_at <= now)
                .values(guard_count_due_at=until)
            )
        return claimed.rowcount == 1

    def stop_for_guard(self, run_id: str, reason: str, figures: dict) -> int:
        """The reputation guard stops the run: every contact it has not sent to (claimed, blocked, or
        sending with an attempt never handed over) goes to a finished stand-in run, ``<run>#released``,
        with its unsent attempt, so the next run that lists it takes it over (claim's rule for a dead
        run's contacts: the same attempt, the same key). Messages under way keep their outcomes coming.
        Returns how many contacts were released (0 when the run was stopped before)."""
        now = utcnow()
        released_run = f"{run_id}#released"[:250]
        with self.engine.begin() as conn:
            stop = {"guard_stopped_at": now, "guard_detail": json.dumps({"reason": reason, **figures})}
            stopped = _upsert_run_limits(
                conn, run_id, stop, stop, where=run_limits.c.guard_stopped_at.is_(None)
            ).rowcount
            if not stopped:
                return 0
            conn.execute(
                bulk.dialect_insert(conn, ledger_runs)
                .values(run_id=released_run, lease_expires_at=now, finished_at=now, created_at=now)
                .on_conflict_do_nothing()
            )
            unsent = (
                select(send_attempts.c.email)
                .where(send_attempts.c.run_id == run_id, send_attempts.c.status == PENDING)
                .scalar_subquery()
            )
            released = conn.execute(
                update(sent_contacts)
                .where(sent_contacts.c.run_id == run_id)
                .where(
                    or_(
                        sent_contacts.c.status.in_((CLAIMED, BLOCKED)),
                        and_(sent_contacts.c.status == SENDING, sent_contacts.c.email.in_(unsent)),
                    )
                )
                .values(run_id=released_run, updated_at=now)
            ).rowcount
            conn.execute(
                update(send_attempts)
                .where(send_attempts.c.run_id == run_id, send_attempts.c.status == PENDING)
                .values(run_id=released_run, updated_at=now)
            )
        return released

    def count_unsent(self, run_id: str) -> int:
        """The run's contacts whose message is due and not sent yet (a send stopped by the quota)."""
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(due_contacts(run_id).subquery())).scalar_one()

    def pause_for_quota(self, run_id: str, resumes_at: datetime) -> None:
        """The run waits for the quota until ``resumes_at`` (the latest any of its tasks was told)."""
        now = utcnow()
        with self.engine.begin() as conn:
            latest = func.greatest if bulk.is_postgres(conn) else func.max
            _upsert_run_limits(
                conn,
                run_id,
                {"quota_resumes_at": resumes_at, "quota_paused_at": now},
                {
                    "quota_resumes_at": latest(func.coalesce(run_limits.c.quota_resumes_at, resumes_at), resumes_at),
                    "quota_paused_at": func.coalesce(run_limits.c.quota_paused_at, now),
                },
            )

    def quota_pause(self, run_id: str) -> datetime | None:
        """When the run's pause for the quota ends (None: it is not paused)."""
        with self.engine.connect() as conn:
            return conn.execute(
                select(run_limits.c.quota_resumes_at).where(run_limits.c.run_id == run_id)
            ).scalar_one_or_none()

    def end_quota_pause(self, run_id: str) -> None:
        """The run sends again: the pause's length goes to its quota_wait_seconds."""
        now = utcnow()
        with self.engine.begin() as conn:
            paused_at = conn.execute(
                select(run_limits.c.quota_paused_at).where(run_limits.c.run_id == run_id).with_for_update()
            ).scalar_one_or_none()
            if paused_at is None:
                return
            conn.execute(
                update(run_limits)
                .where(run_limits.c.run_id == run_id)
                .values(
                    quota_wait_seconds=run_limits.c.quota_wait_seconds + (now - paused_at).total_seconds(),
                    quota_paused_at=None,
                    quota_resumes_at=None,
                )
            )

    def add_limit_figures(self, run_id: str, **figures: float) -> None:
        """Add to the run's figures (``FIGURES``: throttled requests, seconds waited), in one upsert."""
        values = {name: figures.get(name, 0) for name in FIGURES}
        if not any(values.values()):
            return
        with self.engine.begin() as conn:
            _upsert_run_limits(conn, run_id, values, {name: run_limits.c[name] + values[name] for name in FIGURES})

    def limit_figures(self, run_id: str) -> dict:
        """The run's figures: ``FIGURES`` (0 when nothing was limited), the quota's resume time, the guard."""
        with self.engine.connect() as conn:
            row = conn.execute(select(run_limits).where(run_limits.c.run_id == run_id)).mappings().first()
        shown = (*FIGURES, "quota_resumes_at", "guard_stopped_at", "guard_detail")
        if row is None:
            figures = {name: 0 if name in FIGURES else None for name in shown}
        else:
            figures = {name: row[name] for name in shown}
        for name in FIGURES[1:]:
            figures[name] = round(figures[name], 3)
        for name in ("quota_resumes_at", "guard_stopped_at"):  # naive UTC, as text: the report is JSON
            figures[name] = figures[name].isoformat(timespec="seconds") if figures[name] else None
        return figures
