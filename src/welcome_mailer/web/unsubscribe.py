"""One-click unsubscribe (RFC 8058): the URL every message's List-Unsubscribe header points at.

- ``POST /welcome-mailer/unsubscribe?token=...`` (a mail client's one-click, body
  ``List-Unsubscribe=One-Click``, or the page's button): the contact becomes ``unsubscribed``, final.
  Idempotent.
- ``GET`` only shows a page with that button: link scanners and prefetchers follow GETs, and must not
  unsubscribe anybody (RFC 8058 section 3.2).
The token (``welcome_mailer.unsubscribe``) is the only credential: a wrong one is refused with 403.
"""

from __future__ import annotations

import html
import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from welcome_mailer.unsubscribe import UnsubscribeSettings, read_token
from welcome_mailer.web.events import Ledgers

log = logging.getLogger(__name__)
router = APIRouter(tags=["unsubscribe"])


def unsubscribe_settings() -> UnsubscribeSettings:
    return UnsubscribeSettings.from_env()


Settings = Annotated[UnsubscribeSettings, Depends(unsubscribe_settings)]
Token = Annotated[str, Query(max_length=1000)]


def _page(title: str, body: str, status_code: int = 200) -> HTMLResponse:
    return HTMLResponse(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head>"
        f"<body><h1>{title}</h1>{body}</body></html>",
        status_code=status_code,
        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
    )


def _email(request: Request, token: str, settings: UnsubscribeSettings) -> str | None:
    email = read_token(token, settings.secret)
    if email is None:
        client = request.client.host if request.client else "?"
        log.warning("refused an unsubscribe from %s: the token is not valid", client)
    return email


@router.get("/unsubscribe")
def confirm_page(request: Request, token: Token, settings: Settings) -> HTMLResponse:
    email = _email(request, token, settings)
    if email is None:
        return _page("Link not valid", "<p>This unsubscribe link is not valid.</p>", 403)
    return _page(
        "Unsubscribe",
        f"<p>Stop all emails to <b>{html.escape(email)}</b>?</p>"
        f"<form method='post' action='?token={html.escape(token)}'>"
        "<input type='hidden' name='List-Unsubscribe' value='One-Click'>"
        "<button type='submit'>Unsubscribe</button></form>",
    )


@router.post("/unsubscribe")
async def one_click(request: Request, token: Token, settings: Settings, ledgers: Ledgers) -> HTMLResponse:
    email = _email(request, token, settings)
    if email is None:
        return _page("Link not valid", "<p>This unsubscribe link is not valid.</p>", 403)
    changed = await run_in_threadpool(lambda: ledgers().unsubscribe(email))
    if changed:
        log.info("unsubscribed a contact (one-click)")
    return _page("Unsubscribed", f"<p>{html.escape(email)} will not receive any more emails from us.</p>")
