"""Provider webhooks as an outcome source: pure code, no Airflow, no I/O.

One module per provider (``sendgrid``, ``postmark``, ``mailgun``, ``ses``, ``mock``), each with
``verify(...)`` (raises ``Refused`` unless the request carries what that provider signs), ``parse(body) ->
Parsed`` (the provider's events as ``Signal``s, and what could not be read), and ``WEBHOOK``, its row of
the providers table (``providers.PROVIDERS``: its name, the setting that holds its secret, and
``receive``, verify then parse). One table, ``mapping``, turns signals into ``OutcomeEvent``s. The plugin
app (``welcome_mailer.web.events``) serves every row of the providers table through one route, and
records what they parse with ``Ledger.record_outcomes``. Adding a provider: its module, its row, its
mapping entries, and its section in docs/provider-events.md.

How an event finds its attempt: by the provider's message id recorded at send time, or by the attempt's
idempotency key carried as the provider's custom metadata (``vocabulary.METADATA_KEY``) or inside the Message-ID
header the transport set (``<welcome-...-N@host>``).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

IDEMPOTENCY_HEADER = "X-Welcome-Idempotency-Key"  # the same as a header, for providers that echo headers


class Refused(Exception):
    """The request does not carry what the provider signs: answered 401 (no credentials) or 403 (wrong)."""

    def __init__(self, status_code: int, reason: str) -> None:
        super().__init__(reason)
        self.status_code, self.reason = status_code, reason


@dataclass(frozen=True)
class Signal:
    """One provider event, in the provider's own words, before the mapping gives it a meaning."""

    provider: str
    event: str  # the provider's event name: bounce, Bounce, failed, ...
    kind: str = ""  # its subtype: SendGrid's bounce type, SES's bounceType, Postmark's Type, Mailgun's severity
    provider_message_id: str | None = None
    idempotency_key: str | None = None
    detail: str | None = None
    occurred_at: datetime | None = None


@dataclass
class Parsed:
    signals: list[Signal] = field(default_factory=list)
    unparsed: list[str] = field(default_factory=list)  # why each unreadable event could not be read
    # (token, signed timestamp) of a signature that does not cover the body (Mailgun's): the request is
    # recorded only if the token was never used (``replay.used_once``)
    once: tuple[str, str] | None = None

    @property
    def events(self) -> int:
        return len(self.signals) + len(self.unparsed)


@dataclass(frozen=True)
class WebhookRequest:
    """A request to a provider's event endpoint, as its ``receive`` sees it."""

    headers: Mapping[str, str]
    body: bytes
    max_age_seconds: float  # signed timestamps older than this are replays
    fetch: Callable[[str], bytes]  # GET a URL the signature points to (SES: the signing certificate)


@dataclass(frozen=True)
class Answered:
    """A verified request that carries no events to record (SES's subscription confirmation)."""

    reply: dict
    note: str  # for the log
    confirm_url: str | None = None  # to GET before answering (SNS: SubscribeURL)


@dataclass(frozen=True)
class WebhookProvider:
    """One provider's row of the providers table."""

    name: str  # the endpoint: /events/<name>
    secret_field: str  # the WebhookSettings field (and so the environment variable) holding its secret
    receive: Callable[[WebhookRequest, object], Parsed | Answered]  # verify, then parse


def load_json(body: bytes | str, parsed: Parsed, what: str = "body") -> object | None:
    """The JSON value, or None after noting in ``parsed`` why it could not be read."""
    try:
        return json.loads(body)
    except (ValueError, TypeError) as exc:
        parsed.unparsed.append(f"{what} is not JSON: {exc}")
        return None


def check_secret(given: str | bytes, expected: str | bytes) -> bool:
    """Constant-time comparison (no timing oracle for the secret)."""
    given = given.encode() if isinstance(given, str) else given
    expected = expected.encode() if isinstance(expected, str) else expected
    return hmac.compare_digest(given, expected)


def check_age(timestamp: str | None, max_age_seconds: float, now: float | None = None) -> None:
    """Refuse a signed timestamp that is missing, unreadable, or further than ``max_age_seconds`` from now
    (a replay of an old request, or a forged clock)."""
    try:
        signed_at = float(timestamp or "")
    except ValueError:
        raise Refused(401, "missing or unreadable signature timestamp") from None
    current = datetime.now(UTC).timestamp() if now is None else now
    if abs(current - signed_at) > max_age_seconds:
        raise Refused(403, f"signature timestamp {timestamp} is more than {max_age_seconds:.0f} s from now")


def from_epoch(value: object) -> datetime | None:
    try:
        return datetime.fromtimestamp(float(value), UTC).replace(tzinfo=None)
    except (TypeError, ValueError, OverflowError):
        return None


def from_iso(value: object) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.astimezone(UTC).replace(tzinfo=None) if parsed.tzinfo else parsed


def text(value: object, limit: int = 500) -> str | None:
    return None if value is None else str(value)[:limit]
