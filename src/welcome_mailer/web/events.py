"""Provider event webhooks: ``POST /welcome-mailer/events/<provider>`` for ``sendgrid``, ``postmark``,
``mailgun``, ``ses`` (Amazon SES through an SNS HTTPS subscription) and ``mock`` (the mock ESP's push mode).

Each request is verified the way its provider signs it and refused otherwise (401 without credentials,
403 with wrong ones, a warning in the log). A verified request is stored as received in
``provider_events`` and its outcome events recorded in the ledger (``Ledger.record_outcomes``), both
committed, before it is answered 200: a crash never loses an event, a provider's retry is a harmless
duplicate. Events that cannot be read are kept in ``provider_events`` and counted, never dropped silently.

Secrets come from the environment (the api-server's; any Airflow deployment sets it):

| variable | provider |
|---|---|
| WELCOME_MAILER_SENDGRID_PUBLIC_KEY | SendGrid's Signed Event Webhook verification key (base64 or PEM) |
| WELCOME_MAILER_POSTMARK_WEBHOOK_AUTH | ``user:password`` put in the webhook URL on Postmark's side |
| WELCOME_MAILER_MAILGUN_SIGNING_KEY | Mailgun's HTTP webhook signing key |
| WELCOME_MAILER_SNS_TOPIC_ARNS | comma-separated SNS topic ARNs whose messages are accepted |
| WELCOME_MAILER_MOCK_WEBHOOK_SECRET | the mock ESP's ``--push-secret``; set only where the mock runs |
| WELCOME_MAILER_WEBHOOK_MAX_AGE_SECONDS | signed timestamps older than this are refused as replays (86400) |
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Annotated

import httpx
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from sqlalchemy import insert
from starlette.concurrency import run_in_threadpool

from welcome_mailer.ledger import Ledger
from welcome_mailer.ledger.schema import provider_events
from welcome_mailer.outcomes.webhooks import Answered, Parsed, Refused, WebhookRequest, replay
from welcome_mailer.outcomes.webhooks.mapping import to_outcome_event
from welcome_mailer.outcomes.webhooks.providers import PROVIDERS
from welcome_mailer.vocabulary import utcnow
from welcome_mailer.web.ledger import ledger_source

log = logging.getLogger(__name__)
router = APIRouter(prefix="/events", tags=["provider events"])
MAX_BODY = 5 * 1024 * 1024  # SendGrid batches up to ~1 MB of events; SNS messages are at most 256 KB
# Secrets once published as defaults (docker-compose.yaml gave the mock's endpoint this one, whatever the
# provider): anybody can sign with them, so they enable nothing.
PUBLISHED_SECRETS = frozenset({"mock-push-secret"})


@dataclass(frozen=True)
class WebhookSettings:
    sendgrid_public_key: str = ""
    postmark_credentials: str = ""
    mailgun_signing_key: str = ""
    sns_topic_arns: frozenset[str] = frozenset()
    mock_secret: str = ""
    max_age_seconds: float = 86400.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WebhookSettings:
        env = os.environ if environ is None else environ
        arns = env.get("WELCOME_MAILER_SNS_TOPIC_ARNS", "")
        return cls(
            sendgrid_public_key=env.get("WELCOME_MAILER_SENDGRID_PUBLIC_KEY", ""),
            postmark_credentials=env.get("WELCOME_MAILER_POSTMARK_WEBHOOK_AUTH", ""),
            mailgun_signing_key=env.get("WELCOME_MAILER_MAILGUN_SIGNING_KEY", ""),
            sns_topic_arns=frozenset(a.strip() for a in arns.split(",") if a.strip()),
            mock_secret=_unpublished(env, "WELCOME_MAILER_MOCK_WEBHOOK_SECRET"),
            max_age_seconds=float(env.get("WELCOME_MAILER_WEBHOOK_MAX_AGE_SECONDS", "86400")),
        )


def _unpublished(env: Mapping[str, str], name: str) -> str:
    secret = env.get(name, "")
    if secret in PUBLISHED_SECRETS:
        log.warning("%s is a published default: its endpoint refuses every request until it is a secret", name)
        return ""
    return secret


def webhook_settings() -> WebhookSettings:
    return WebhookSettings.from_env()


@cache
def _certificate(url: str) -> bytes:
    """SNS signing certificates change rarely: one fetch per URL per process."""
    return httpx.get(url, timeout=10, follow_redirects=False).raise_for_status().content


def sns_client() -> tuple[Callable[[str], bytes], Callable[[str], None]]:
    """How SNS certificates are fetched and subscriptions confirmed (tests override: no network)."""
    return _certificate, lambda url: httpx.get(url, timeout=10, follow_redirects=False).raise_for_status()


Settings = Annotated[WebhookSettings, Depends(webhook_settings)]
Ledgers = Annotated[Callable[[], Ledger], Depends(ledger_source)]


def record(ledger: Ledger, provider: str, body: bytes, parsed: Parsed) -> dict:
    """Store the request, then its outcomes; both committed when this returns."""
    events, ignored = [], 0
    for signal in parsed.signals:
        event = to_outcome_event(signal)
        if event is None:
            ignored += 1
        else:
            events.append(event)
    with ledger.engine.begin() as conn:
        conn.execute(
            insert(provider_events).values(
                provider=provider,
                received_at=utcnow(),
                body=body.decode("utf-8", "replace").replace("\x00", "\ufffd"),
                events=parsed.events,
                recorded=len(events),
                ignored=ignored,
                unparsed=len(parsed.unparsed),
                detail="\n".join(parsed.unparsed)[:20000] or None,
            )
        )
    counts = ledger.record_outcomes(events)
    if parsed.unparsed:
        log.warning("%s webhook: %s events could not be read (kept in provider_events): %s",
                    provider, len(parsed.unparsed), parsed.unparsed[0])  # fmt: skip
    return {
        "events": parsed.events,
        "recorded": len(events),
        "applied": counts.applied,
        "unchanged": counts.unchanged,
        "inboxed": counts.inboxed,
        "ignored": ignored,
        "unparsed": len(parsed.unparsed),
    }


async def _receive(request: Request, provider: str, secret: object, handle: Callable[[bytes], dict]) -> JSONResponse:
    """Read the body (bounded), then verify, store and record it in a worker thread (the api-server's
    event loop never waits on the database)."""
    client = request.client.host if request.client else "?"
    if not secret:
        log.warning("refused %s webhook from %s: not configured on this server", provider, client)
        return JSONResponse({"error": f"{provider} webhook not configured"}, status_code=403)
    if int(request.headers.get("content-length") or 0) > MAX_BODY:
        return JSONResponse({"error": f"body larger than {MAX_BODY} bytes"}, status_code=413)
    body = await request.body()
    if len(body) > MAX_BODY:
        return JSONResponse({"error": f"body larger than {MAX_BODY} bytes"}, status_code=413)
    try:
        return JSONResponse(await run_in_threadpool(handle, body))
    except Refused as exc:
        log.warning("refused %s webhook from %s: %s", provider, client, exc.reason)
        return JSONResponse({"error": exc.reason}, status_code=exc.status_code)


@router.post("/{provider}")
async def receive_events(
    provider: str,
    request: Request,
    settings: Settings,
    ledgers: Ledgers,
    sns: Annotated[tuple[Callable[[str], bytes], Callable[[str], None]], Depends(sns_client)],
) -> JSONResponse:
    """A provider's events (``outcomes.webhooks.providers.PROVIDERS``: SendGrid's Signed Event Webhook,
    Postmark's basic auth, Mailgun's HMAC (each token honoured once), SES through SNS, the mock ESP's push
    mode), verified its own way."""
    webhook = PROVIDERS.get(provider)
    if webhook is None:
        return JSONResponse({"error": f"no provider {provider[:40]!r}; known: {', '.join(PROVIDERS)}"}, status_code=404)
    secret = getattr(settings, webhook.secret_field)
    fetch_certificate, confirm = sns

    def handle(body: bytes) -> dict:
        received = webhook.receive(
            WebhookRequest(request.headers, body, settings.max_age_seconds, fetch_certificate), secret
        )
        if isinstance(received, Answered):
            if received.confirm_url:
                confirm(received.confirm_url)
            log.info("%s webhook: %s", webhook.name, received.note)
            return received.reply
        ledger = ledgers()
        if received.once is None:
            return record(ledger, webhook.name, body, received)
        with replay.used_once(ledger, webhook.name, *received.once, settings.max_age_seconds):
            return record(ledger, webhook.name, body, received)

    return await _receive(request, webhook.name, secret, handle)
