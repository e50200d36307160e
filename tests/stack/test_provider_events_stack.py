"""Provider events on the real stack: the api-server's plugin app takes the mock ESP's signed pushes and
drives every contact to its outcome with the lookups off, unsubscribes through a real request, and
keeps up with a sustained stream of events, losing none (counted from the ledger)."""

from __future__ import annotations

import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import func, select

from tests.stack.helpers import assert_proven_from_outside, contact_file, ledger_url, messages_for, run_and_wait
from tests.support.webhook_payloads import mock_push
from welcome_mailer.hooks.esp import OUTCOME_LOOKUPS_VARIABLE
from welcome_mailer.ledger import AcceptedAttempt, Ledger, connect, send_attempts, sent_contacts
from welcome_mailer.unsubscribe import UnsubscribeSettings, list_unsubscribe_headers, read_token

pytestmark = [pytest.mark.slow, pytest.mark.stack]


def test_pushed_events_alone_drive_every_contact_to_its_outcome(stack):
    path = contact_file(stack, "push", rows=2000, seed=31, domain="push")
    stack.api("POST", "/api/v2/variables", json={"key": OUTCOME_LOOKUPS_VARIABLE, "value": "off"}).raise_for_status()
    try:
        lookups_before = stack.esp.get("/healthz").json()["lookups"]
        _, state = run_and_wait(stack, path)
        health = stack.esp.get("/healthz").json()
    finally:
        stack.api("DELETE", f"/api/v2/variables/{OUTCOME_LOOKUPS_VARIABLE}").raise_for_status()
    assert state == "success"
    assert health["lookups"] == lookups_before, "the pipeline asked the provider nothing"
    assert health["pushed"] > 0
    assert_proven_from_outside(stack, "push", path)
    secret = stack.env()["WELCOME_MAILER_UNSUBSCRIBE_SECRET"]
    for message in messages_for(stack, "push"):  # the workers' transport added the one-click headers
        [token] = parse_qs(urlsplit(message["headers"]["List-Unsubscribe"].strip("<>")).query)["token"]
        assert read_token(token, secret) == message["to"]


def test_one_click_unsubscribe_through_the_api_server(stack):
    ledger = Ledger(connect(ledger_url(stack)))
    [message_id] = _sent_without_a_provider(ledger, f"unsub-{time.time_ns()}", 1)
    email = next(ledger.pending_messages(message_id.rsplit("-", 1)[0])).email
    env = stack.env()
    settings = UnsubscribeSettings(env["WELCOME_MAILER_UNSUBSCRIBE_URL"], env["WELCOME_MAILER_UNSUBSCRIBE_SECRET"])
    link = list_unsubscribe_headers(email, settings)["List-Unsubscribe"][1:-1]
    assert link.startswith(f"{stack.config.api_url}/welcome-mailer/unsubscribe?token=")
    page = httpx.get(link, timeout=10)
    assert page.status_code == 200 and "<form method='post'" in page.text
    one_click = httpx.post(link, content="List-Unsubscribe=One-Click", timeout=10,
                           headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert one_click.status_code == 200
    assert httpx.post(link.replace("token=", "token=x"), timeout=10).status_code == 403
    with ledger.engine.connect() as conn:
        assert conn.execute(select(sent_contacts.c.status).where(sent_contacts.c.email == email)).scalar() == (
            "unsubscribed"
        )
    ledger.engine.dispose()


def test_1000_events_a_second_for_30_s_and_none_is_lost(stack):
    """Batches of 100 events (SendGrid and the mock post batches) every 0.1 s. The figures are printed
    (pytest -s); WELCOME_MAILER_LOAD_SECONDS makes it shorter or longer."""
    seconds = float(os.environ.get("WELCOME_MAILER_LOAD_SECONDS", "30"))
    rate, batch = 1000, 100
    total = int(seconds * rate)
    ledger = Ledger(connect(ledger_url(stack)))
    run_id = f"load-{time.time_ns()}"
    ids = _sent_without_a_provider(ledger, run_id, total)
    url = f"{stack.config.api_url}/welcome-mailer/events/mock"
    secret = stack.config.esp_push_secret

    def post(chunk: list[str]) -> tuple[int, float]:
        body, headers = mock_push(secret, [{"event_id": i, "message_id": i, "status": "delivered"} for i in chunk])
        started = time.monotonic()
        answer = client.post(url, content=body, headers=headers)
        return answer.status_code, time.monotonic() - started

    chunks = [ids[i : i + batch] for i in range(0, total, batch)]
    with httpx.Client(timeout=60, limits=httpx.Limits(max_connections=16)) as client, ThreadPoolExecutor(16) as pool:
        started = time.monotonic()
        futures = []
        for n, chunk in enumerate(chunks):
            time.sleep(max(0.0, started + n * batch / rate - time.monotonic()))
            futures.append(pool.submit(post, chunk))
        results = [f.result() for f in futures]
        elapsed = time.monotonic() - started
    latencies = sorted(latency for _, latency in results)
    with ledger.engine.connect() as conn:
        delivered = conn.execute(
            select(func.count()).where(send_attempts.c.run_id == run_id, send_attempts.c.status == "delivered")
        ).scalar_one()
    ledger.engine.dispose()
    print(
        f"\nload: {total} events in {len(chunks)} posts over {elapsed:.1f} s ({total / elapsed:.0f} events/s); "
        f"post latency median {statistics.median(latencies) * 1000:.0f} ms, "
        f"p99 {latencies[int(len(latencies) * 0.99) - 1] * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms; "
        f"{delivered} delivered in the ledger"
    )
    assert [status for status, _ in results] == [200] * len(chunks)
    assert delivered == total, "every event is in the ledger"
    assert elapsed < seconds * 1.5, "the endpoint kept up with the rate"


def _sent_without_a_provider(ledger: Ledger, run_id: str, count: int) -> list[str]:
    """``count`` contacts with an accepted message each (ids ``<run>-<n>``), as a send would leave them."""
    from welcome_mailer.contacts import Contact

    ledger.renew_lease(run_id)
    ledger.stage(run_id, [Contact(f"c{n}@{run_id}.example.com", f"C {n}", n + 1) for n in range(count)])
    claimed = ledger.claim(run_id, 1000, 1024)
    ids = []
    for batch_no in claimed.batches:
        attempts = ledger.start_attempts(run_id, batch_no)
        accepted = [AcceptedAttempt(a.email, a.attempt, f"{run_id}-{a.email.split('@')[0]}") for a in attempts]
        ledger.record_sent(run_id, accepted)
        ids.extend(a.message_id for a in accepted)
    assert len(ids) == count
    return ids
