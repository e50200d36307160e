"""Outcome events: an inbox for events that match no recorded send yet, an index to match events by the
provider's message id, and the end of the hand-made ``ledger_schema`` version table.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_send_attempts_provider_message_id", "send_attempts", ["provider_message_id"])
    op.create_table(
        "outcome_inbox",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("provider_message_id", sa.String(100)),
        sa.Column("idempotency_key", sa.String(100)),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("source", sa.String(40), nullable=False),
        sa.Column("detail", sa.Text),
        sa.Column("received_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_outcome_inbox_provider_message_id", "outcome_inbox", ["provider_message_id"])
    op.create_index("ix_outcome_inbox_idempotency_key", "outcome_inbox", ["idempotency_key"])
    op.drop_table("ledger_schema")


def downgrade() -> None:
    op.create_table("ledger_schema", sa.Column("version", sa.Integer, primary_key=True))
    op.execute("INSERT INTO ledger_schema (version) VALUES (1)")
    op.drop_table("outcome_inbox")
    op.drop_index("ix_send_attempts_provider_message_id", "send_attempts")
