"""The HTTP transport: a provider's REST API in the mock ESP's contract v1 (the same shape as SendGrid /
Postmark / Resend style APIs). ``HttpEmailProvider`` is the API's client: it sends batches (the
``EmailProvider`` transport) and answers status lookups (used by the outcome source
``welcome_mailer.outcomes.http_lookup``).

Retries: 5xx, 429 (honouring Retry-After), timeouts and connection errors are retried with exponential
backoff and jitter. A send is always retried with the same idempotency keys, so a retry after a lost
response returns the messages the ESP already accepted instead of creating new ones. A send answered 429
(the provider's rate or quota) is not retried here: its messages come back ``throttled`` with the
Retry-After, and the pipeline sends the same attempts again when the provider lets it (``limits``).
"""

from __future__ import annotations

import functools
import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

import httpx
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from welcome_mailer.transports import OutgoingMessage, SendResult
from welcome_mailer.unsubscribe import UnsubscribeSettings, list_unsubscribe_headers

log = logging.getLogger(__name__)

MAX_BATCH = 1000  # the contract's limit for one send or lookup request


@functools.cache
def tls_context() -> ssl.SSLContext:
    """httpx's default verifying context, made once per process: every task and sensor poke opens a
    client, and building the context (loading the CA bundle) costs 50-60 ms each time."""
    return httpx.create_ssl_context()


class EspRequestError(RuntimeError):
    """The ESP refused a request for a reason a retry cannot fix (4xx other than 429)."""


class EspUnavailable(RuntimeError):
    """A failure worth retrying: 5xx, 429, timeout, connection error."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EspThrottled(EspUnavailable):
    """HTTP 429: the provider's rate or quota; nothing of the request was done."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 10
    max_seconds: float = 300.0
    initial_wait: float = 0.2
    max_wait: float = 30.0


class HttpEmailProvider:
    kind = "http"
    idempotent = True  # the contract's Idempotency-Key: the same key returns the message already accepted
    max_batch = MAX_BATCH

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        unsubscribe: UnsubscribeSettings | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.unsubscribe = unsubscribe or UnsubscribeSettings()  # List-Unsubscribe headers when configured
        self._client = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout,
            transport=transport,
            verify=tls_context(),
        )
        self.retry = retry or RetryPolicy()
        self._backoff = wait_exponential_jitter(initial=self.retry.initial_wait, max=self.retry.max_wait)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> HttpEmailProvider:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def check(self) -> None:
        """Prove the API key with a status lookup of an id nobody has; raises on failure."""
        self.lookup(["welcome-mailer-connection-test"])

    def send_batch(self, messages: Sequence[OutgoingMessage]) -> list[SendResult]:
        _check_size(messages)
        body = {"messages": [self._item(m) for m in messages]}
        try:
            results = self._request("POST", "/v1/messages/batch", body, retry_throttled=False)["results"]
        except EspThrottled as exc:
            error, wait = str(exc)[:500], exc.retry_after
            return [SendResult(m.to, None, error, throttled=True, retry_after=wait) for m in messages]
        if len(results) != len(messages):
            raise EspRequestError(f"ESP answered {len(results)} results for {len(messages)} messages")
        return [SendResult(to=r["to"], message_id=r.get("id"), error=r.get("error")) for r in results]

    def _item(self, message: OutgoingMessage) -> dict:
        item = {"to": message.to, "subject": message.subject, "text": message.text}
        if message.html is not None:
            item["html"] = message.html
        headers = list_unsubscribe_headers(message.to, self.unsubscribe)  # {} unless configured
        return {**item, "idempotency_key": message.idempotency_key, **({"headers": headers} if headers else {})}

    def lookup(self, message_ids: Sequence[str]) -> dict[str, str]:
        """Current status of up to MAX_BATCH messages: id -> sent | delivered | bounced | blocked.
        Ids the provider does not know are left out."""
        _check_size(message_ids)
        answer = self._request("POST", "/v1/messages/lookup", {"ids": list(message_ids)})
        return {m["id"]: m["status"] for m in answer["messages"]}

    def _request(self, method: str, path: str, body: dict, retry_throttled: bool = True) -> dict:
        def worth_retrying(exc: BaseException) -> bool:
            return isinstance(exc, EspUnavailable) and (retry_throttled or not isinstance(exc, EspThrottled))

        retrying = Retrying(
            retry=retry_if_exception(worth_retrying),
            wait=self._wait,
            stop=stop_after_attempt(self.retry.attempts) | stop_after_delay(self.retry.max_seconds),
            before_sleep=_log_retry,
            reraise=True,
        )
        return retrying(self._request_once, method, path, body)

    def _request_once(self, method: str, path: str, body: dict) -> dict:
        try:
            response = self._client.request(method, path, json=body)
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            raise EspUnavailable(f"{method} {path}: {exc!r}") from exc
        if response.status_code == 429:
            raise EspThrottled(
                f"{method} {path}: HTTP 429 {response.text[:200]}", retry_after=_retry_after_seconds(response)
            )
        if response.status_code >= 500:
            raise EspUnavailable(
                f"{method} {path}: HTTP {response.status_code} {response.text[:200]}",
                retry_after=_retry_after_seconds(response),
            )
        if response.status_code >= 400:
            raise EspRequestError(f"{method} {path}: HTTP {response.status_code} {response.text[:500]}")
        return response.json()

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            return min(retry_after, self.retry.max_wait)
        return self._backoff(state)


def _check_size(items: Sequence) -> None:
    if not 1 <= len(items) <= MAX_BATCH:
        raise ValueError(f"a request takes 1 to {MAX_BATCH} items, got {len(items)}")


def _retry_after_seconds(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    log.warning("ESP call failed (try %s), retrying in %.1fs: %s", state.attempt_number, state.upcoming_sleep, exc)
