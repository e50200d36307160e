"""Signature tokens honoured once: the ledger side of Mailgun's replay rule.

Mailgun signs only ``timestamp + token``, not the event, so a captured signature block is valid with
any body for as long as its timestamp is accepted (``WELCOME_MAILER_WEBHOOK_MAX_AGE_SECONDS``). Mailgun's
"Securing Webhooks" page: "you can cache the token value locally and not honor any subsequent request with
the same token. This will prevent replay attacks." The cache is the ledger's ``webhook_tokens`` table, so
every api-server shares it; a token is kept until its signed timestamp is too old to pass ``check_age``,
then deleted by the next request.

Unlike the rest of this package this module does I/O: it writes to the ledger database.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from sqlalchemy import Engine, delete

from welcome_mailer.ledger import bulk, utcnow
from welcome_mailer.ledger.schema import webhook_tokens
from welcome_mailer.outcomes.webhooks import Refused, from_epoch


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@contextmanager
def used_once(engine: Engine, provider: str, token: str, timestamp: str, max_age_seconds: float) -> Iterator[None]:
    """Spend ``token`` (committed) before the block runs, or refuse it (403) when a request already spent
    it. A block that raises gives the token back: the provider's retry of a request that failed here
    carries the same signature, and must still be honoured."""
    expires_at = from_epoch(timestamp) + timedelta(seconds=max_age_seconds)  # verified: a number
    row = {"provider": provider, "token_hash": _hash(token)}
    with engine.begin() as conn:
        conn.execute(delete(webhook_tokens).where(webhook_tokens.c.expires_at < utcnow()))
        spent = conn.execute(
            bulk.dialect_insert(conn, webhook_tokens).values(**row, expires_at=expires_at).on_conflict_do_nothing()
        ).rowcount
    if not spent:
        raise Refused(403, "the signature's token was already used (a replayed signature)")
    try:
        yield
    except BaseException:
        with engine.begin() as conn:
            conn.execute(
                delete(webhook_tokens).where(
                    webhook_tokens.c.provider == provider, webhook_tokens.c.token_hash == row["token_hash"]
                )
            )
        raise
