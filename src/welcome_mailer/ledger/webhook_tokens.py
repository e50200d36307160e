"""Webhook signature tokens already honoured (``webhook_tokens``): Mailgun's replay rule, kept in the
ledger database so every api-server shares it. ``outcomes.webhooks.replay`` says why."""

from __future__ import annotations

import hashlib
from datetime import datetime

from sqlalchemy import Engine, delete

from welcome_mailer.ledger import bulk
from welcome_mailer.ledger.schema import webhook_tokens
from welcome_mailer.vocabulary import utcnow


def _token_row(provider: str, token: str) -> dict:
    return {"provider": provider, "token_hash": hashlib.sha256(token.encode()).hexdigest()}


class WebhookTokens:
    engine: Engine

    def spend_webhook_token(self, provider: str, token: str, expires_at: datetime) -> bool:
        """Record the token as used until ``expires_at`` (committed); False when it was used already.
        Tokens past their expiry are deleted on the way."""
        with self.engine.begin() as conn:
            conn.execute(delete(webhook_tokens).where(webhook_tokens.c.expires_at < utcnow()))
            insert = bulk.dialect_insert(conn, webhook_tokens)
            return bool(conn.execute(
                insert.values(**_token_row(provider, token), expires_at=expires_at).on_conflict_do_nothing()
            ).rowcount)  # fmt: skip

    def give_back_webhook_token(self, provider: str, token: str) -> None:
        """Forget a token whose request failed: the provider's retry carries it again."""
        row = _token_row(provider, token)
        with self.engine.begin() as conn:
            conn.execute(
                delete(webhook_tokens).where(
                    webhook_tokens.c.provider == row["provider"], webhook_tokens.c.token_hash == row["token_hash"]
                )
            )
