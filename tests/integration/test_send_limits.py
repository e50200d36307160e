"""The provider's send rate and rolling quota, shared through the ledger's database by every send task of
every run: measured from the mocks' own acceptance timestamps, with several sending processes at once."""

from __future__ import annotations

import itertools
import multiprocessing
import time
from datetime import datetime

import pytest

from tests.support.limits import busiest_window, claim_runs
from tests.support.smtp_relay import FROM_EMAIL, launch_relay
from welcome_mailer import pipeline
from welcome_mailer.ledger import Ledger, connect
from welcome_mailer.ledger.limits import MAX_RETAKES, ProviderLimits, QuotaExhausted, SendLimiter
from welcome_mailer.transports.http import HttpEmailProvider
from welcome_mailer.transports.smtp import SmtpEmailProvider, SmtpSettings

# Rates and quotas measured from wall clocks: alone, after the parallel part of `make test`.
pytestmark = pytest.mark.alone
ALL_DELIVERED = {"delivered_rate": 1.0, "bounced_rate": 0, "blocked_rate": 0}


def test_busiest_window_counts_a_sliding_window():
    assert busiest_window([0.0, 0.5, 0.99, 1.0, 1.2, 3.0]) == 4  # 0.5, 0.99, 1.0, 1.2
    assert busiest_window([]) == 0


def test_reservations_of_several_limiters_take_consecutive_slots(ledger):
    assert SendLimiter(ledger.engine, ProviderLimits("esp", 100)).request_cap == 4, "a 25th of a second's"
    limits = ProviderLimits("esp", max_messages_per_second=10)
    limiters = [SendLimiter(ledger.engine, limits) for _ in range(3)]
    starts = [limiter.reserve(1)[0] for _ in range(4) for limiter in limiters]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(abs(gap - 0.1) < 1e-6 for gap in gaps), gaps
    other_account = SendLimiter(ledger.engine, ProviderLimits("other", max_messages_per_second=100))
    assert other_account.reserve(1)[1] < 0.01, "each provider account has its own slots"


class _SlowReplies(SendLimiter):
    """A sender whose first ``late`` reservations reach it 0.1 s after the database read its clock (its
    process not scheduled on a busy machine), or, with ``lock_wait``, wait 0.1 s before it reads it (the
    account's row lock held by another sender)."""

    def __init__(self, *args, late: int, lock_wait: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.late, self.lock_wait, self.reservations = late, lock_wait, 0

    def reserve(self, count: int, **kwargs) -> tuple[float, float]:
        self.reservations += 1
        delayed = self.reservations <= self.late
        if delayed and self.lock_wait:
            time.sleep(0.1)
        reserved = super().reserve(count, **kwargs)
        if delayed and not self.lock_wait:
            time.sleep(0.1)
        return reserved


def test_a_sender_late_for_its_slot_takes_a_new_one_however_it_got_late(ledger):
    """Late from the reservation's reply, not only from the sleep: a sender that would go more than
    LATE_SECONDS after its slot started lets it go; after MAX_RETAKES it goes anyway. A wait for the
    account's row lock, before the database reads its clock, makes no sender late."""
    limits = ProviderLimits("esp", max_messages_per_second=50)
    warmed = _SlowReplies(ledger.engine, limits, late=0)
    warmed.acquire(2)  # its clock gaps: a reply on time
    warmed.late = warmed.reservations + 1
    warmed.acquire(2)
    assert (warmed.reservations, warmed.late_slots) == (3, 1)
    always = _SlowReplies(ledger.engine, limits, late=100)
    always.acquire(2)
    assert (always.reservations, always.late_slots) == (MAX_RETAKES + 1, MAX_RETAKES)
    locked = _SlowReplies(ledger.engine, limits, late=100, lock_wait=True)
    locked.acquire(2)
    assert (locked.reservations, locked.late_slots) == (1, 0)
    no_rate = _SlowReplies(ledger.engine, ProviderLimits("quota-only", max_messages_per_24h=100), late=100)
    no_rate.acquire(2)
    assert no_rate.reservations == 1, "with no rate there are no slots to be late for"
    both = ProviderLimits("both", max_messages_per_second=50, max_messages_per_24h=10)
    late_with_quota = _SlowReplies(ledger.engine, both, late=100)
    late_with_quota.acquire(4)
    assert late_with_quota.late_slots == MAX_RETAKES
    late_with_quota.late = 0
    late_with_quota.acquire(6)  # fits only if the retakes' slots were not counted against the quota
    with pytest.raises(QuotaExhausted):
        late_with_quota.acquire(1)


def test_the_rolling_quota_refuses_what_would_pass_it_and_frees_with_the_window(ledger):
    limits = ProviderLimits("esp", max_messages_per_24h=10, quota_window_seconds=2.0)
    first, second = SendLimiter(ledger.engine, limits), SendLimiter(ledger.engine, limits)
    first.reserve(6)
    second.reserve(4)
    with pytest.raises(QuotaExhausted) as refused:
        first.reserve(1)
    assert 2.5 < refused.value.wait_seconds <= 3.1, "the window and QUOTA_MARGIN_SECONDS"
    time.sleep(refused.value.wait_seconds)
    assert second.reserve(6)[1] <= 0, "the window moved on: its first reservation freed"
    with pytest.raises(QuotaExhausted):
        second.reserve(5)


def _send_batches(ledger_url: str, provider: dict, run_id: str, batch_nos: list[int], limits: ProviderLimits) -> int:
    """One send task's work, in a process of its own (a worker)."""
    ledger = Ledger(connect(ledger_url))
    if provider["kind"] == "http":
        transport = HttpEmailProvider(provider["url"], provider["api_key"])
    else:
        transport = SmtpEmailProvider(SmtpSettings(**provider["settings"]))
    with transport:
        return sum(
            pipeline.send_batch(ledger, transport, run_id, b, 500, limiter=SendLimiter(ledger.engine, limits))["sent"]
            for b in batch_nos
        )


def send_in_processes(ledger_url, provider, claimed, limits) -> int:
    """Every batch of every run in a process of its own, all at once."""
    jobs = [(ledger_url, provider, run_id, [b], limits) for run_id, batches in claimed.items() for b in batches]
    with multiprocessing.get_context("spawn").Pool(len(jobs)) as pool:
        return sum(pool.starmap(_send_batches, jobs))


RATE = 100


@pytest.mark.slow
def test_the_rate_holds_across_send_tasks_and_runs_and_is_reached(ledger, ledger_url, start_esp, tmp_path):
    """2 runs x 2 send tasks (4 processes) through one HTTP provider account limited to RATE/s: in no
    one-second window more than the rate plus 10%, at least 90% of it reached, and the provider (which
    enforces the same rate) never had to throttle."""
    esp = start_esp(hold_rate=0, max_messages_per_second=RATE, **ALL_DELIVERED)
    claimed = claim_runs(ledger, tmp_path, runs=2, contacts=600, batches=2)
    provider = {"kind": "http", "url": esp.url, "api_key": esp.api_key}
    sent = send_in_processes(ledger_url, provider, claimed, ProviderLimits("esp_default", RATE))

    stamps = [datetime.fromisoformat(m["created_at"]).timestamp() for m in esp.messages()]
    assert sent == len(stamps) == 1200
    reached = (len(stamps) - 1) / (max(stamps) - min(stamps))
    print(f"busiest second {busiest_window(stamps)}, reached {reached:.1f}/s of {RATE}/s")
    assert busiest_window(stamps) <= RATE * 1.1
    assert reached >= RATE * 0.9
    assert esp.client.get("/healthz").json()["throttled"] == 0
    assert ledger.limit_figures("run0")["rate_wait_seconds"] > 0


@pytest.mark.slow
def test_the_rate_keeps_an_ses_like_relay_from_throttling(ledger, ledger_url, tmp_path):
    """SMTP, 2 runs x 2 send tasks, to a relay that answers 454 above 50 messages/s (a bucket of one
    second's worth, as SES): with the limiter at 50/s no message is throttled, no one-second window holds
    more than 55, and at least 45/s are reached."""
    relay = launch_relay(tmp_path, tmp_path / "Maildir", max_messages_per_second=50, **ALL_DELIVERED)
    try:
        claimed = claim_runs(ledger, tmp_path, runs=2, contacts=200, batches=2)
        settings = {"host": "127.0.0.1", "port": relay.port, "from_email": FROM_EMAIL, "use_ssl": False}
        provider = {"kind": "smtp", "settings": settings | {"starttls": False, "timeout": 10, "max_connections": 2}}
        sent = send_in_processes(ledger_url, provider, claimed, ProviderLimits("esp_default", 50))
        entries = relay.messages()
    finally:
        relay.stop()
    stamps = [e["created_at"] for e in entries if e["received"]]
    assert sent == len(stamps) == 400
    assert not [e for e in entries if e["throttled"]], "the relay never had to throttle"
    reached = (len(stamps) - 1) / (max(stamps) - min(stamps))
    print(f"SMTP: busiest second {busiest_window(stamps)}, reached {reached:.1f}/s of 50/s")
    assert busiest_window(stamps) <= 55
    assert reached >= 45


def test_a_limiter_shared_by_a_pokes_batches_counts_each_wait_once(ledger, start_esp, tmp_path):
    """resend_blocked hands one limiter to every batch of its poke: each batch adds its own wait to the
    run's figures, not the limiter's total so far."""
    esp = start_esp(hold_rate=0, **ALL_DELIVERED)
    [batches] = claim_runs(ledger, tmp_path, runs=1, contacts=60, batches=3).values()
    limiter = SendLimiter(ledger.engine, ProviderLimits("esp_default", max_messages_per_second=100))
    with HttpEmailProvider(esp.url, esp.api_key) as transport:
        results = [pipeline.send_batch(ledger, transport, "run0", b, 20, limiter=limiter) for b in batches]
    assert len(results) == 3 and sum(r["sent"] for r in results) == 60
    assert sum(r["rate_wait_seconds"] for r in results) == pytest.approx(limiter.rate_wait_seconds, abs=0.01)
    assert ledger.limit_figures("run0")["rate_wait_seconds"] == pytest.approx(limiter.rate_wait_seconds, abs=0.01)


def test_the_limits_come_from_the_provider_connections_extras():
    limits = ProviderLimits.from_extra("esp_default", {"max_messages_per_second": "14", "max_messages_per_24h": 50000})
    assert (limits.max_messages_per_second, limits.max_messages_per_24h, limits.quota_window_seconds) == (
        14.0,
        50000,
        86400.0,
    )
    assert limits.limited and not ProviderLimits.from_extra("esp_default", {"max_messages_per_second": ""}).limited
    with pytest.raises(ValueError, match="above 0"):
        ProviderLimits.from_extra("esp_default", {"max_messages_per_second": 0})


def test_a_run_that_crosses_the_quota_pauses_without_a_worker_and_goes_on_when_the_window_frees(
    ledger, start_esp, tmp_path
):
    """A quota of 100 messages per 4 s and 250 contacts: the send tasks stop at the quota (the rest stays
    the run's, due, never failed), the resend poke gives its slot back at once while the window is shut,
    and sends the rest when it frees; the ESP's log shows one first attempt per contact, within the quota."""
    from welcome_mailer.outcomes.http_lookup import HttpLookupSource

    esp = start_esp(hold_rate=0, **ALL_DELIVERED)
    limits = ProviderLimits("esp_default", max_messages_per_24h=100, quota_window_seconds=4.0)
    [batches] = claim_runs(ledger, tmp_path, runs=1, contacts=250, batches=5).values()
    with HttpEmailProvider(esp.url, esp.api_key) as transport:
        results = [
            pipeline.send_batch(
                ledger, transport, "run0", b, 50, limiter=SendLimiter(ledger.engine, limits), quota_linger_seconds=0.5
            )
            for b in batches
        ]
        assert sum(r["sent"] for r in results) == 100 and sum(r["unsent"] for r in results) == 150
        assert ledger.count_unsent("run0") == 150 and ledger.quota_pause("run0") is not None
        assert ledger.run_summary("run0")["by_status"].get("failed", 0) == 0
        sources = [HttpLookupSource(transport)]
        assert pipeline.await_delivery(ledger, sources, "run0", 5, linger_seconds=0.2, poll_seconds=0.05)

        def poke() -> bool:
            return pipeline.resend_blocked(
                ledger, transport, sources, "run0", max_attempts=5, batch_size=50, max_batches=1024,
                backoff_seconds=0, linger_seconds=0.5, poll_seconds=0.05, limiter=SendLimiter(ledger.engine, limits),
            )  # fmt: skip

        started = time.monotonic()
        assert not poke() and time.monotonic() - started < 1.0, "the poke gives its slot back at once"
        pokes, deadline = 1, time.monotonic() + 60
        while not poke():
            pokes += 1
            assert time.monotonic() < deadline
            time.sleep(0.3)  # the reschedule

    messages = esp.messages()
    assert sorted(m["to"] for m in messages) == sorted(f"r0.user{i}@example.com" for i in range(250))
    assert all(m["idempotency_key"].endswith("-1") for m in messages), "no attempt spent waiting"
    stamps = [datetime.fromisoformat(m["created_at"]).timestamp() for m in messages]
    assert busiest_window(stamps, 4.0) <= 100, "the rolling quota held"
    assert max(stamps) - min(stamps) >= 8.0, "two windows had to free"
    figures = ledger.limit_figures("run0")
    assert figures["quota_wait_seconds"] > 0 and figures["quota_resumes_at"] is None
    assert ledger.count_unsent("run0") == 0 and pokes > 2
