"""Signature tokens honoured once: Mailgun's replay rule.

Mailgun signs only ``timestamp + token``, not the event, so a captured signature block is valid with
any body for as long as its timestamp is accepted (``WELCOME_MAILER_WEBHOOK_MAX_AGE_SECONDS``). Mailgun's
"Securing Webhooks" page: "you can cache the token value locally and not honor any subsequent request with
the same token. This will prevent replay attacks." The cache is the ledger's ``webhook_tokens`` table
(``Ledger.spend_webhook_token``), so every api-server shares it; a token is kept until its signed timestamp
is too old to pass ``check_age``, then deleted.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Protocol

from welcome_mailer.outcomes.webhooks import Refused, from_epoch


class TokenStore(Protocol):
    def spend_webhook_token(self, provider: str, token: str, expires_at) -> bool: ...
    def give_back_webhook_token(self, provider: str, token: str) -> None: ...


@contextmanager
def used_once(store: TokenStore, provider: str, token: str, timestamp: str, max_age_seconds: float) -> Iterator[None]:
    """Spend ``token`` before the block runs, or refuse it (403) when a request already spent it. A block
    that raises gives the token back: the provider's retry of a request that failed here carries the same
    signature, and must still be honoured."""
    expires_at = from_epoch(timestamp) + timedelta(seconds=max_age_seconds)  # verified: a number
    if not store.spend_webhook_token(provider, token, expires_at):
        raise Refused(403, "the signature's token was already used (a replayed signature)")
    try:
        yield
    except BaseException:
        store.give_back_webhook_token(provider, token)
        raise
