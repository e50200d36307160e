"""The mock ESP's push mode: like a real provider's webhook, it posts a signed event for every message's
outcome to a configured URL once the outcome is known (after the message's hold), in batches, retrying
failed posts with backoff and, on request, sending some events twice (as real providers do).

Body ``{"events": [{"event_id", "message_id", "idempotency_key", "status", "occurred_at"}]}``, header
``X-Mock-Esp-Signature: t=<unix time>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>`` (verified by
``welcome_mailer.outcomes.webhooks.mock``). Events are kept in memory only: a restarted mock does not
re-post what it had not posted yet (the pipeline's lookups, when on, still find those outcomes).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import hmac
import json
import logging
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx

from include.mocks.esp.store import Message

log = logging.getLogger("mock_esp.push")


@dataclass(frozen=True)
class PushSettings:
    url: str
    secret: str
    batch_size: int = 100  # events per post
    duplicate_rate: float = 0.0  # share of events posted a second time, with a new event id
    max_backoff_seconds: float = 10.0
    seed: int = 7


def signature(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


class Pusher:
    """Outcomes due at their messages' resolve times, posted by one background task."""

    def __init__(self, settings: PushSettings) -> None:
        self.settings = settings
        self._rng = random.Random(settings.seed)
        self._due: list[tuple[float, int, Message]] = []  # (resolve_at, seq, message), a heap
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.posted = 0  # events the receiver accepted (2xx), duplicates included
        self.failed_posts = 0

    def schedule(self, message: Message) -> None:
        heapq.heappush(self._due, (message.resolve_at, message.seq, message))
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def _take_due(self, now: float) -> list[dict]:
        events = []
        while self._due and self._due[0][0] <= now and len(events) < self.settings.batch_size:
            _, _, message = heapq.heappop(self._due)
            events.append(self._event(message, "1"))
            if self.settings.duplicate_rate and self._rng.random() < self.settings.duplicate_rate:
                events.append(self._event(message, "2"))  # SendGrid-like: a retried event gets a new id
        return events

    @staticmethod
    def _event(message: Message, copy: str) -> dict:
        return {
            "event_id": f"{message.id}-{message.outcome}-{copy}",
            "message_id": message.id,
            "idempotency_key": message.idempotency_key,
            "status": message.outcome,
            "occurred_at": datetime.fromtimestamp(message.resolve_at, UTC).isoformat(),
        }

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            while True:
                now = time.time()
                events = self._take_due(now)
                if events:
                    await self._post(client, events)
                    continue
                wait = min(self._due[0][0] - now, 1.0) if self._due else 1.0
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=max(wait, 0.01))

    async def _post(self, client: httpx.AsyncClient, events: list[dict]) -> None:
        """Post until the receiver answers 2xx, re-signed every try, with capped exponential backoff."""
        body = json.dumps({"events": events}).encode()
        backoff = 0.2
        while True:
            headers = {"Content-Type": "application/json",
                       "X-Mock-Esp-Signature": signature(self.settings.secret, int(time.time()), body)}  # fmt: skip
            try:
                response = await client.post(self.settings.url, content=body, headers=headers)
                if response.is_success:
                    self.posted += len(events)
                    return
                problem = f"HTTP {response.status_code} {response.text[:200]}"
            except httpx.HTTPError as exc:
                problem = repr(exc)
            self.failed_posts += 1
            log.warning("push of %s events failed (%s); retrying in %.1f s", len(events), problem, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.settings.max_backoff_seconds)
