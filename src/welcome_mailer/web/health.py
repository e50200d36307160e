"""Health of the plugin app: ``GET /health`` answers 200 only when the ledger can be opened and is at the
schema this code needs (one query), else 503, so a load balancer or ``make events``'s user sees at once
what every event and unsubscribe request would meet. Nobody is authenticated here: the answer names no
database, the reason goes to the log."""

from __future__ import annotations

import logging
from collections.abc import Callable
from importlib.metadata import version
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from welcome_mailer.ledger import Ledger
from welcome_mailer.ledger.migrate import check_at_head
from welcome_mailer.web.ledger import ledger_source

log = logging.getLogger(__name__)
router = APIRouter()


def _ledger_ok(ledgers: Callable[[], Ledger]) -> bool:
    try:
        check_at_head(ledgers().engine)
    except Exception as exc:  # whatever stops the ledger from opening: the answer is the same
        log.warning("health: the ledger cannot be used: %s", exc)
        return False
    return True


@router.get("/health")
async def health(ledgers: Annotated[Callable[[], Ledger], Depends(ledger_source)]) -> JSONResponse:
    ok = await run_in_threadpool(_ledger_ok, ledgers)
    body = {"status": "ok" if ok else "ledger unavailable", "version": version("welcome-mailer")}
    return JSONResponse(body, status_code=200 if ok else 503)
