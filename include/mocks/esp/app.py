"""The mock ESP's HTTP API (contract v1), with fault injection for tests.

Endpoints, status codes and field names are a fixed contract: the pipeline's client and the tests that
audit the message log depend on them. See docs/mock-esp.md.
"""

from __future__ import annotations

import asyncio
import collections
import math
import random
import re
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError

from include.mocks.esp.push import Pusher, PushSettings
from include.mocks.esp.store import IdempotencyConflict, MessageStore, OutcomeSettings

MAX_BATCH = 1000
STATUSES = ("sent", "delivered", "bounced", "blocked")


@dataclass(frozen=True)
class FaultSettings:
    """Faults for tests; all off by default."""

    fail_rate: float = 0.0  # share of /v1 requests answered 503 before anything happens
    lose_response_rate: float = 0.0  # share of sends accepted, then answered 503 (the client never sees the ids)
    rate_limit_rps: float = 0.0  # /v1 requests per second before 429 + Retry-After; 0 = unlimited
    latency_ms: float = 0.0  # added to every request
    # A provider that stops answering mid-run: once this many new messages have been accepted since the
    # faults were set, every /v1 request waits, unanswered, until the faults change. 0: never.
    stall_after_messages: int = 0
    seed: int = 7
    # An account's sending limits, as SES/SendGrid enforce them: a send over either is answered 429 with
    # Retry-After and nothing of it is accepted. 0: no limit.
    max_messages_per_second: float = 0.0  # new messages a second (a bucket of one second's worth)
    daily_quota: int = 0  # new messages per quota_window_seconds, rolling
    quota_window_seconds: float = 86400.0


class FaultsIn(BaseModel):
    fail_rate: float = Field(0.0, ge=0, le=1)
    lose_response_rate: float = Field(0.0, ge=0, le=1)
    rate_limit_rps: float = Field(0.0, ge=0)
    latency_ms: float = Field(0.0, ge=0)
    stall_after_messages: int = Field(0, ge=0)
    seed: int = 7
    max_messages_per_second: float = Field(0.0, ge=0)
    daily_quota: int = Field(0, ge=0)
    quota_window_seconds: float = Field(86400.0, gt=0)


class MessageIn(BaseModel):
    to: str = Field(min_length=1, max_length=320)
    subject: str = Field(max_length=998)
    text: str = Field(max_length=100_000)
    html: str | None = Field(default=None, max_length=500_000)  # an HTML body beside the text, kept in the log
    # Extra headers (e.g. List-Unsubscribe), kept in the audit log; not part of the idempotency check.
    headers: dict[str, Annotated[str, Field(max_length=2000)]] | None = Field(default=None, max_length=20)


class BatchItemIn(MessageIn):
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=255)


class BatchIn(BaseModel):
    messages: list[BatchItemIn] = Field(min_length=1)


class LookupIn(BaseModel):
    ids: list[str] = Field(min_length=1, max_length=MAX_BATCH)


class EspError(Exception):
    def __init__(self, status_code: int, error: str, headers: dict[str, str] | None = None) -> None:
        self.status_code, self.error, self.headers = status_code, error, headers


class _TokenBucket:
    def __init__(self, rate: float) -> None:
        self.rate, self.tokens, self.stamp = rate, rate, time.monotonic()

    def wait_needed(self) -> float:
        """Take a token; return 0 when one was free, else the seconds until one will be."""
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class _SendingLimits:
    """An account's message rate (a bucket of one second's tokens; a request larger than the bucket goes
    when it is full, leaving a debt) and its rolling quota."""

    def __init__(self, settings: FaultSettings) -> None:
        self.rate, self.quota, self.window = (
            settings.max_messages_per_second, settings.daily_quota, settings.quota_window_seconds
        )  # fmt: skip
        self.tokens, self.stamp = self.rate, time.monotonic()
        self.accepted: collections.deque[float] = collections.deque()
        self.throttled = 0  # requests answered 429 for these limits

    def check(self, count: int) -> None:
        """Take ``count`` new messages, or raise the 429 (nothing taken)."""
        if not count:
            return
        now = time.monotonic()
        if self.quota:
            while self.accepted and self.accepted[0] <= now - self.window:
                self.accepted.popleft()
            if len(self.accepted) + count > self.quota:
                self.throttled += 1
                frees_at = self.accepted[len(self.accepted) + count - self.quota - 1] + self.window
                retry = max(1, math.ceil(frees_at - now)) if count <= self.quota else math.ceil(self.window)
                raise EspError(429, "Daily message quota exceeded", {"Retry-After": str(retry)})
        if self.rate:
            self.tokens = min(self.rate, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            need = min(count, self.rate)
            if self.tokens < need:
                self.throttled += 1
                retry = max(1, math.ceil((need - self.tokens) / self.rate))
                raise EspError(429, "Maximum sending rate exceeded", {"Retry-After": str(retry)})
            self.tokens -= count
        if self.quota:
            self.accepted.extend([now] * count)


class _LiveFaults:
    def __init__(self, settings: FaultSettings, messages: int = 0) -> None:
        self.stalled = 0  # requests waiting unanswered now (stall_after_messages)
        self.replace(settings, messages)

    def replace(self, settings: FaultSettings, messages: int) -> None:
        """New fault settings; `messages`: how many the store holds now (where stall_after_messages counts from)."""
        self.settings = settings
        self.stall_at = messages + settings.stall_after_messages if settings.stall_after_messages else None
        self.rng = random.Random(settings.seed)
        self.bucket = _TokenBucket(settings.rate_limit_rps) if settings.rate_limit_rps > 0 else None
        self.limits = _SendingLimits(settings)


# Most addresses are plain ASCII: for them this check is enough and 20x cheaper than email-validator,
# which stays the authority for everything else (tests/unit/test_mock_esp_addresses.py proves that every
# address this accepts, email-validator accepts too).
_PLAIN_ADDRESS = re.compile(
    r"[a-z0-9_+-]+(?:\.[a-z0-9_+-]+)*@(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}", re.IGNORECASE
)
_SPECIAL_USE_SUFFIXES = tuple("." + name for name in SPECIAL_USE_DOMAIN_NAMES)


def _is_plain_address(address: str) -> bool:
    local, _, domain = address.rpartition("@")
    domain = domain.lower()
    return (
        len(address) <= 254
        and len(local) <= 64
        and _PLAIN_ADDRESS.fullmatch(address) is not None
        and not ("." + domain).endswith(_SPECIAL_USE_SUFFIXES)  # 'local' or 'x.local', for example
        and "--" not in domain  # reserved in a label's 3rd-4th place ('xn--'): email-validator decides
    )


def _address_error(address: str) -> str | None:
    if _is_plain_address(address):
        return None
    try:
        validate_email(address, check_deliverability=False)
    except EmailNotValidError as exc:
        return f"invalid address: {exc}"
    return None


def create_app(
    api_key: str,
    outcomes: OutcomeSettings | None = None,
    faults: FaultSettings | None = None,
    journal: Path | None = None,
    push: PushSettings | None = None,
) -> FastAPI:
    store = MessageStore(outcomes or OutcomeSettings(), journal=journal)
    # Faults can be changed at runtime (PUT /admin/faults), so tests can switch them on in a running stack.
    live = _LiveFaults(faults or FaultSettings(), len(store))
    pusher = Pusher(push) if push else None  # push mode: outcomes posted to a webhook (include/mocks/esp/push.py)
    lookups = 0  # lookup requests answered, so tests can prove the pipeline made none in push mode

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        if pusher:
            pusher.start()
        yield
        if pusher:
            await pusher.stop()

    app = FastAPI(
        title="Mock ESP",
        version="1",
        description="A mock email service provider for the welcome mailer. No email ever leaves the machine.",
        lifespan=lifespan,
    )
    app.state.store = store

    def accept(to: str, subject: str, text: str, key: str | None, headers: dict[str, str] | None, html: str | None):
        message, created = store.accept(to, subject, text, key, headers, html)
        if created and pusher:
            pusher.schedule(message)
        return message, created

    @app.exception_handler(EspError)
    async def _esp_error(_: Request, exc: EspError) -> JSONResponse:
        return JSONResponse({"error": exc.error}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(ValidationError)
    async def _invalid_body(_: Request, exc: ValidationError) -> JSONResponse:
        # The batch body is validated inside its endpoint (to answer 413 before 422): same 422 as FastAPI's.
        return JSONResponse({"error": "invalid request body", "detail": exc.errors(include_url=False)}, 422)

    async def authorised(authorization: Annotated[str | None, Header()] = None) -> None:
        if authorization != f"Bearer {api_key}":
            raise EspError(401, "missing or invalid API key")

    async def before_request() -> None:
        """Latency, rate limit and up-front failures, in that order, for every /v1 request."""
        faults = live.settings
        if faults.latency_ms:
            await asyncio.sleep(faults.latency_ms / 1000)
        if live.stall_at is not None and len(store) >= live.stall_at:
            live.stalled += 1
            try:
                while live.settings is faults:  # until the faults change
                    await asyncio.sleep(0.05)
            finally:
                live.stalled -= 1
        if live.bucket is not None:
            wait = live.bucket.wait_needed()
            if wait:
                raise EspError(429, "rate limit exceeded", {"Retry-After": str(max(1, math.ceil(wait)))})
        if faults.fail_rate and live.rng.random() < faults.fail_rate:
            raise EspError(503, "service unavailable (injected)")

    def after_send() -> None:
        if live.settings.lose_response_rate and live.rng.random() < live.settings.lose_response_rate:
            raise EspError(503, "service unavailable after accepting (injected)")

    v1 = [Depends(authorised), Depends(before_request)]

    @app.put("/admin/faults", dependencies=[Depends(authorised)])
    async def set_faults(body: FaultsIn) -> dict:
        """Not part of the v1 contract: switch fault injection at runtime (tests of a running stack)."""
        live.replace(FaultSettings(**body.model_dump()), len(store))
        return body.model_dump()

    @app.get("/healthz")
    async def healthz() -> dict:
        pushed = {"pushed": pusher.posted, "failed_pushes": pusher.failed_posts} if pusher else {}
        faults = {"throttled": live.limits.throttled, "stalled": live.stalled}
        return {"status": "ok", "messages": len(store), "lookups": lookups, **faults, **pushed}

    @app.post("/v1/messages", status_code=202, dependencies=v1)
    async def send_message(
        body: MessageIn, idempotency_key: Annotated[str | None, Header(max_length=255)] = None
    ) -> JSONResponse:
        error = _address_error(body.to)
        if error:
            raise EspError(422, error)
        live.limits.check(0 if store.known_key(idempotency_key) else 1)
        try:
            message, created = accept(body.to, body.subject, body.text, idempotency_key, body.headers, body.html)
        except IdempotencyConflict:
            raise EspError(409, "idempotency key already used with a different payload") from None
        after_send()
        now = store.now()
        payload = {"id": message.id, "to": message.to, "status": message.status(now)}
        return JSONResponse(payload, status_code=202 if created else 200)

    @app.post("/v1/messages/batch", status_code=202, dependencies=v1)
    async def send_batch(request: Request) -> dict:
        try:
            raw = await request.json()
        except ValueError:
            raise EspError(422, "request body is not JSON") from None
        if isinstance(raw, dict) and isinstance(raw.get("messages"), list) and len(raw["messages"]) > MAX_BATCH:
            raise EspError(413, f"a batch holds at most {MAX_BATCH} messages")
        body = BatchIn.model_validate(raw)
        live.limits.check(sum(1 for item in body.messages if not store.known_key(item.idempotency_key)))
        results = []
        for item in body.messages:
            error = _address_error(item.to)
            if error is None:
                try:
                    message, _ = accept(item.to, item.subject, item.text, item.idempotency_key, item.headers, item.html)
                except IdempotencyConflict:
                    error = "idempotency key already used with a different payload"
            if error:
                results.append({"to": item.to, "error": error})
            else:
                results.append({"id": message.id, "to": message.to, "status": message.status(store.now())})
        after_send()
        return {"results": results}

    @app.post("/v1/messages/lookup", dependencies=v1)
    async def lookup(body: LookupIn) -> dict:
        nonlocal lookups
        lookups += 1
        now = store.now()
        found, unknown = [], []
        for message_id in body.ids:
            message = store.get(message_id)
            if message is None:
                unknown.append(message_id)
            else:
                found.append(message.summary(now))
        return {"messages": found, "unknown": unknown}

    @app.get("/v1/messages/{message_id}", dependencies=v1)
    async def get_message(message_id: str) -> dict:
        message = store.get(message_id)
        if message is None:
            raise EspError(404, f"no message {message_id}")
        return message.full(store.now())

    @app.get("/v1/messages", dependencies=v1)
    async def list_messages(
        limit: Annotated[int, Query(ge=1, le=MAX_BATCH)] = MAX_BATCH,
        cursor: Annotated[str | None, Query(pattern=r"^\d+$")] = None,
        to: str | None = None,
        status: Annotated[str | None, Query(pattern="^(" + "|".join(STATUSES) + ")$")] = None,
    ) -> dict:
        messages, next_position = store.page(cursor=int(cursor or 0), limit=limit, to=to, status=status)
        now = store.now()
        return {
            "messages": [m.full(now) for m in messages],
            "next_cursor": None if next_position is None else str(next_position),
        }

    return app
