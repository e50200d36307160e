"""Webhook signature tokens already used (issue 30): Mailgun signs only a timestamp and a random token,
not the event, so a captured signature block could be posted again with any other event for as long as
its timestamp is accepted. Mailgun's "Securing Webhooks" says to cache the token and not honour a later
request with the same one; ``webhook_tokens`` is that cache, in the ledger database so every api-server
shares it. Rows expire with the signed timestamp they came with.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "webhook_tokens",
        sa.Column("provider", sa.String(40), primary_key=True),
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("expires_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_webhook_tokens_expires_at", "webhook_tokens", ["expires_at"])


def downgrade() -> None:
    op.drop_table("webhook_tokens")
