"""The mock ESP over real HTTP: the v1 contract, outcomes, holds, idempotency, faults, the audit log."""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest


@pytest.fixture(scope="module")
def shared_esp(tmp_path_factory):
    """One service for the read-only checks (auth), to keep the module fast."""
    from tests.support.esp import launch_esp

    esp = launch_esp(tmp_path_factory.mktemp("esp"), hold_rate=0)
    yield esp
    esp.stop()


def _message(i: int, **extra) -> dict:
    return {"to": f"user{i}@example.com", "subject": "Welcome!", "text": f"Hi user {i}, Welcome!", **extra}


def test_healthz_needs_no_key(esp):
    response = httpx.get(f"{esp.url}/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/messages", _message(1)),
        ("POST", "/v1/messages/batch", {"messages": [_message(1)]}),
        ("POST", "/v1/messages/lookup", {"ids": ["x"]}),
        ("GET", "/v1/messages/x", None),
        ("GET", "/v1/messages", None),
    ],
)
@pytest.mark.parametrize("authorization", [None, "Bearer wrong", "test-key"])
def test_every_v1_endpoint_needs_the_key(shared_esp, method, path, body, authorization):
    headers = {"Authorization": authorization} if authorization else {}
    response = httpx.request(method, f"{shared_esp.url}{path}", json=body, headers=headers)
    assert response.status_code == 401
    assert "error" in response.json()
    assert shared_esp.messages() == []


def test_send_one_message_then_read_it_back(esp):
    response = esp.client.post("/v1/messages", json=_message(1))
    assert response.status_code == 202
    sent = response.json()
    assert sent["to"] == "user1@example.com" and sent["status"] in {"delivered", "bounced", "blocked"}
    full = esp.client.get(f"/v1/messages/{sent['id']}").json()
    assert full["text"] == "Hi user 1, Welcome!" and full["subject"] == "Welcome!"
    assert set(full) == {"id", "to", "subject", "text", "status", "created_at", "updated_at", "idempotency_key"}
    assert esp.client.get("/v1/messages/nope").status_code == 404


def test_same_idempotency_key_returns_the_same_message(esp):
    first = esp.client.post("/v1/messages", json=_message(1), headers={"Idempotency-Key": "k1"})
    again = esp.client.post("/v1/messages", json=_message(1), headers={"Idempotency-Key": "k1"})
    assert (first.status_code, again.status_code) == (202, 200)
    assert first.json()["id"] == again.json()["id"]
    conflict = esp.client.post("/v1/messages", json=_message(2), headers={"Idempotency-Key": "k1"})
    assert conflict.status_code == 409
    assert len(esp.messages()) == 1


@pytest.mark.parametrize(
    "body", [{"to": "not-an-address", "subject": "s", "text": "t"}, {"subject": "s"}, {"to": "a@example.com"}]
)
def test_invalid_single_message_is_422(esp, body):
    assert esp.client.post("/v1/messages", json=body).status_code == 422
    assert esp.messages() == []


def test_batch_results_in_request_order_with_per_item_refusals(esp):
    items = [_message(1), {"to": "broken@", "subject": "s", "text": "t"}, _message(3, idempotency_key="k3")]
    response = esp.client.post("/v1/messages/batch", json={"messages": items})
    assert response.status_code == 202
    results = response.json()["results"]
    assert [r["to"] for r in results] == ["user1@example.com", "broken@", "user3@example.com"]
    assert "id" in results[0] and "error" in results[1] and "id" in results[2]
    replay = esp.client.post("/v1/messages/batch", json={"messages": [_message(3, idempotency_key="k3")]}).json()
    assert replay["results"][0]["id"] == results[2]["id"]
    conflict = esp.client.post("/v1/messages/batch", json={"messages": [_message(4, idempotency_key="k3")]}).json()
    assert "error" in conflict["results"][0]
    assert len(esp.messages()) == 2


def test_batch_size_limits(esp):
    too_many = {"messages": [_message(i) for i in range(1001)]}
    assert esp.client.post("/v1/messages/batch", json=too_many).status_code == 413
    assert esp.client.post("/v1/messages/batch", json={"messages": []}).status_code == 422
    assert esp.client.post("/v1/messages/batch", content=b"not json").status_code == 422
    assert esp.messages() == []


def test_lookup_reports_known_and_unknown_ids(esp):
    sent = esp.client.post("/v1/messages/batch", json={"messages": [_message(1), _message(2)]}).json()["results"]
    ids = [r["id"] for r in sent]
    answer = esp.client.post("/v1/messages/lookup", json={"ids": [*ids, "missing"]}).json()
    assert [m["id"] for m in answer["messages"]] == ids
    assert answer["unknown"] == ["missing"]
    assert all(set(m) == {"id", "to", "status", "updated_at"} for m in answer["messages"])
    too_many = {"ids": [str(i) for i in range(1001)]}
    assert esp.client.post("/v1/messages/lookup", json=too_many).status_code == 422


def test_audit_log_pages_through_more_than_a_thousand_messages(esp):
    for start in range(0, 2500, 1000):
        batch = [_message(i) for i in range(start, min(start + 1000, 2500))]
        assert esp.client.post("/v1/messages/batch", json={"messages": batch}).status_code == 202
    first_page = esp.client.get("/v1/messages", params={"limit": 1000}).json()
    assert len(first_page["messages"]) == 1000 and first_page["next_cursor"] is not None
    everything = esp.messages()
    assert [m["to"] for m in everything] == [f"user{i}@example.com" for i in range(2500)]
    assert len({m["id"] for m in everything}) == 2500
    assert [m["to"] for m in esp.messages(to="user7@example.com")] == ["user7@example.com"]
    bounced = esp.messages(status="bounced")
    assert bounced and all(m["status"] == "bounced" for m in bounced)
    assert esp.client.get("/v1/messages", params={"limit": 1001}).status_code == 422


def test_outcome_shares_over_ten_thousand_messages(esp):
    for start in range(0, 10_000, 1000):
        esp.client.post("/v1/messages/batch", json={"messages": [_message(i) for i in range(start, start + 1000)]})
    shares = Counter(m["status"] for m in esp.messages())
    assert sum(shares.values()) == 10_000
    assert 7700 <= shares["delivered"] <= 8300
    assert 850 <= shares["bounced"] <= 1150
    assert 850 <= shares["blocked"] <= 1150


def test_same_seed_and_requests_give_the_same_outcomes(start_esp):
    outcomes = []
    for _ in range(2):
        esp = start_esp(seed=123, hold_rate=0)
        esp.client.post("/v1/messages/batch", json={"messages": [_message(i) for i in range(300)]})
        outcomes.append([m["status"] for m in esp.messages()])
    assert outcomes[0] == outcomes[1]
    assert len(set(outcomes[0])) == 3


def test_held_messages_stay_sent_then_resolve_and_never_change(start_esp):
    esp = start_esp(hold_rate=1, hold_min_seconds=0.5, hold_max_seconds=1.0)
    ids = [
        r["id"]
        for r in esp.client.post("/v1/messages/batch", json={"messages": [_message(1), _message(2)]}).json()["results"]
    ]
    lookup = esp.client.post("/v1/messages/lookup", json={"ids": ids}).json()["messages"]
    assert {m["status"] for m in lookup} == {"sent"}
    time.sleep(1.1)
    resolved = esp.client.post("/v1/messages/lookup", json={"ids": ids}).json()["messages"]
    assert all(m["status"] in {"delivered", "bounced", "blocked"} for m in resolved)
    time.sleep(0.3)
    assert esp.client.post("/v1/messages/lookup", json={"ids": ids}).json()["messages"] == resolved


def test_injected_failure_before_anything_happens(start_esp):
    esp = start_esp(fail_rate=1)
    response = esp.client.post("/v1/messages", json=_message(1), headers={"Idempotency-Key": "k"})
    assert response.status_code == 503
    assert httpx.get(f"{esp.url}/healthz").json()["messages"] == 0


def test_lost_response_then_retry_gives_one_message(start_esp):
    esp = start_esp(lose_response_rate=1)
    first = esp.client.post("/v1/messages/batch", json={"messages": [_message(1, idempotency_key="k1")]})
    retry = esp.client.post("/v1/messages/batch", json={"messages": [_message(1, idempotency_key="k1")]})
    assert first.status_code == retry.status_code == 503  # the response is lost every time...
    assert httpx.get(f"{esp.url}/healthz").json()["messages"] == 1  # ...but only one message exists


def test_rate_limit_answers_429_with_retry_after(start_esp):
    esp = start_esp(rate_limit_rps=5)
    codes = [esp.client.get("/v1/messages", params={"limit": 1}) for _ in range(12)]
    limited = [r for r in codes if r.status_code == 429]
    assert limited, "12 requests at once must exceed 5 per second"
    assert all(int(r.headers["Retry-After"]) >= 1 for r in limited)
    assert "error" in limited[0].json()


def test_openapi_docs_are_served(esp):
    assert httpx.get(f"{esp.url}/docs").status_code == 200
    assert "/v1/messages/batch" in httpx.get(f"{esp.url}/openapi.json").json()["paths"]


def test_faults_can_be_switched_at_runtime(esp):
    assert esp.client.put("/admin/faults", json={"fail_rate": 1}).status_code == 200
    assert esp.client.post("/v1/messages", json=_message(1)).status_code == 503
    assert esp.client.put("/admin/faults", json={}).status_code == 200
    assert esp.client.post("/v1/messages", json=_message(1)).status_code == 202
    assert httpx.put(f"{esp.url}/admin/faults", json={}).status_code == 401
    assert esp.client.put("/admin/faults", json={"fail_rate": 2}).status_code == 422


def test_a_stalled_esp_answers_nothing_until_the_faults_change(esp):
    before = httpx.get(f"{esp.url}/healthz").json()["messages"]
    assert esp.client.put("/admin/faults", json={"stall_after_messages": 1}).status_code == 200
    assert esp.client.post("/v1/messages", json=_message(101)).status_code == 202  # the one let through
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(esp.client.post, "/v1/messages", json=_message(102))
        deadline = time.monotonic() + 10
        while httpx.get(f"{esp.url}/healthz").json()["stalled"] != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert httpx.get(f"{esp.url}/healthz").json()["stalled"] == 1
        assert not waiting.done(), "a stalled ESP answers nothing"
        assert esp.client.put("/admin/faults", json={}).status_code == 200
        assert waiting.result(timeout=10).status_code == 202
    health = httpx.get(f"{esp.url}/healthz").json()
    assert (health["stalled"], health["messages"]) == (0, before + 2)
