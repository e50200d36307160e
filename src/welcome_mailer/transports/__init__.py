"""Transports: how a batch of attempts reaches the email provider. One module per transport.

A transport only sends. What became of a message afterwards is an outcome source's business
(``welcome_mailer.outcomes``), even when the transport learns some outcomes at once (a provider refusing
an address at send time is reported in ``SendResult.error``).

To add a transport: a class with the attributes and methods of ``EmailProvider``, in a new module here,
and its row in ``welcome_mailer.hooks.esp.TRANSPORTS`` (which connection types choose it, how it is built
from the connection, which outcome sources the delivery sensors poll for its messages), and its page in
docs/.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, Self


@dataclass(frozen=True)
class OutgoingMessage:
    to: str
    subject: str
    text: str
    idempotency_key: str
    to_name: str = ""
    html: str | None = None  # an HTML body beside the text (multipart/alternative over SMTP)


@dataclass(frozen=True)
class SendResult:
    to: str
    message_id: str | None  # None when the provider refused this message
    error: str | None = None
    # An outcome the transport learnt at once, recorded right after the send (an SMTP 4xx reply: blocked).
    outcome: str | None = None
    # Handed over without a reply (SMTP: the connection died after the data): it may have gone out, so it
    # is recorded as unconfirmed and never sent again automatically.
    unconfirmed: bool = False
    # The provider throttled the request (HTTP 429, SMTP 454 "Throttling failure"): nothing was sent. The
    # SAME attempt goes again later, and it never counts towards max_attempts. ``retry_after``: the
    # provider's wait in seconds, when it said one.
    throttled: bool = False
    retry_after: float | None = None


class EmailProvider(Protocol):
    """What every transport offers the pipeline; used as a context manager, which closes it."""

    kind: str  # its row in welcome_mailer.hooks.esp.TRANSPORTS: "http", "smtp"
    # True when sending the same idempotency key twice can never make a second email. The pipeline
    # re-sends an attempt whose acceptance it never saw only through an idempotent transport.
    idempotent: bool
    max_batch: int  # messages per send_batch call

    def send_batch(self, messages: Sequence[OutgoingMessage]) -> list[SendResult]:
        """Send up to ``max_batch`` messages; results in request order."""
        ...

    def check(self) -> None:
        """Reach the provider and prove the credentials, sending nothing (the connection page's "Test");
        raises on failure."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *_exc) -> None: ...
