"""The pipeline's ESP client against the real mock service, with every fault switched on."""

from __future__ import annotations

import time

import httpx
import pytest

from welcome_mailer.transports import OutgoingMessage
from welcome_mailer.transports.http import EspRequestError, EspUnavailable, HttpEmailProvider, RetryPolicy

FAST_RETRY = RetryPolicy(attempts=40, max_seconds=120, initial_wait=0.01, max_wait=1.0)


def _outgoing(i: int) -> OutgoingMessage:
    return OutgoingMessage(f"user{i}@example.com", "Welcome!", f"Hi user {i}, Welcome!", f"key-{i}")


def send_until_not_throttled(client: HttpEmailProvider, messages: list[OutgoingMessage]) -> list:
    """What the pipeline does with a throttled send: the same messages again after the Retry-After."""
    while True:
        results = client.send_batch(messages)
        if not any(r.throttled for r in results):
            return results
        assert all(r.throttled and r.message_id is None for r in results), "a 429 throttles the whole request"
        time.sleep(results[0].retry_after or 0.05)


def test_nothing_lost_nothing_doubled_with_every_fault_on(start_esp):
    esp = start_esp(fail_rate=0.2, lose_response_rate=0.2, rate_limit_rps=40, latency_ms=5, hold_rate=0)
    client = HttpEmailProvider(esp.url, esp.api_key, retry=FAST_RETRY)
    ids: dict[str, str] = {}
    for start in range(0, 1500, 250):
        results = send_until_not_throttled(client, [_outgoing(i) for i in range(start, start + 250)])
        assert [r.to for r in results] == [f"user{i}@example.com" for i in range(start, start + 250)]
        ids.update({r.to: r.message_id for r in results})
    statuses = {}
    for start in range(0, 1500, 500):
        chunk = [ids[f"user{i}@example.com"] for i in range(start, start + 500)]
        statuses.update(client.lookup(chunk))
    client.close()

    log = esp.messages()
    assert len(log) == 1500, "a retried send must never create a second message"
    assert {m["idempotency_key"] for m in log} == {f"key-{i}" for i in range(1500)}
    assert {m["id"] for m in log} == set(ids.values()), "every id the client holds is a real message"
    assert statuses == {m["id"]: m["status"] for m in log}


def test_a_refused_key_is_not_retried(esp):
    client = HttpEmailProvider(esp.url, "wrong-key", retry=FAST_RETRY)
    with pytest.raises(EspRequestError, match="401"):
        client.send_batch([_outgoing(1)])


def test_refused_address_comes_back_as_an_error_result(esp):
    with HttpEmailProvider(esp.url, esp.api_key) as client:
        results = client.send_batch([OutgoingMessage("broken@", "s", "t", "k")])
    assert results[0].message_id is None and "invalid address" in results[0].error


def test_a_lookup_answered_429_is_retried_after_retry_after_with_the_same_body():
    bodies, waits = [], []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(request.content)
        if len(bodies) == 1:
            return httpx.Response(429, headers={"Retry-After": "0.05"}, json={"error": "slow down"})
        return httpx.Response(200, json={"messages": [{"id": "m1", "status": "delivered"}], "unknown": []})

    client = HttpEmailProvider("http://esp", "k", transport=httpx.MockTransport(handler), retry=FAST_RETRY)
    original_wait = client._wait
    client._wait = lambda state: waits.append(original_wait(state)) or waits[-1]
    assert client.lookup(["m1"]) == {"m1": "delivered"}
    assert len(bodies) == 2 and bodies[0] == bodies[1]
    assert waits == [0.05]


def test_a_send_answered_429_comes_back_throttled_with_the_retry_after_and_is_not_retried_here():
    bodies = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(request.content)
        return httpx.Response(429, headers={"Retry-After": "7"}, json={"error": "Daily message quota exceeded"})

    client = HttpEmailProvider("http://esp", "k", transport=httpx.MockTransport(handler), retry=FAST_RETRY)
    results = client.send_batch([_outgoing(1), _outgoing(2)])
    assert len(bodies) == 1, "the pipeline sends the same attempts again, when the provider lets it"
    assert [(r.to, r.message_id, r.throttled, r.retry_after) for r in results] == [
        ("user1@example.com", None, True, 7.0),
        ("user2@example.com", None, True, 7.0),
    ]
    assert "quota" in results[0].error


def test_gives_up_after_the_retry_budget():
    client = HttpEmailProvider(
        "http://esp",
        "k",
        transport=httpx.MockTransport(lambda request: httpx.Response(503, json={"error": "down"})),
        retry=RetryPolicy(attempts=3, initial_wait=0.001, max_wait=0.001),
    )
    with pytest.raises(EspUnavailable, match="503"):
        client.lookup(["m1"])


@pytest.mark.parametrize("size", [0, 1001])
def test_request_size_is_checked_before_sending(size):
    client = HttpEmailProvider("http://esp", "k", transport=httpx.MockTransport(lambda r: httpx.Response(500)))
    with pytest.raises(ValueError, match="1 to 1000"):
        client.send_batch([_outgoing(i) for i in range(size)])


def test_every_message_carries_its_one_click_unsubscribe_headers_when_configured(esp):
    from urllib.parse import parse_qs, urlsplit

    from welcome_mailer.unsubscribe import UnsubscribeSettings, read_token

    settings = UnsubscribeSettings("https://mail.example.com/welcome-mailer/unsubscribe", "s3cret")
    with HttpEmailProvider(esp.url, esp.api_key, unsubscribe=settings) as client:
        client.send_batch([_outgoing(i) for i in range(3)])
    with HttpEmailProvider(esp.url, esp.api_key) as client:
        client.send_batch([_outgoing(3)])
    log = esp.messages()
    for message in log[:3]:
        headers = message["headers"]
        assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        [token] = parse_qs(urlsplit(headers["List-Unsubscribe"].strip("<>")).query)["token"]
        assert read_token(token, "s3cret") == message["to"]
    assert "headers" not in log[3], "no endpoint configured: no header"
