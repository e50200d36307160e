"""Operator actions in the UI and CLI: suppress, erase (GDPR), release; where each contact came from; the
indexes the UI's pages need on a large ledger.

- ``sent_contacts.source_line``: the line of the owning run's file (the file is in the run's report).
- ``erased_contacts``: keyed hashes of erased addresses; ``operator_actions``: the audit trail.
- ``ix_sent_contacts_status`` (contacts per state) and ``ix_send_attempts_created_at`` (messages per day).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sent_contacts") as batch:
        batch.add_column(sa.Column("source_line", sa.Integer))
    op.create_index("ix_sent_contacts_status", "sent_contacts", ["status"])
    op.create_index("ix_send_attempts_created_at", "send_attempts", ["created_at"])
    op.create_table(
        "erased_contacts",
        sa.Column("email_hash", sa.String(64), primary_key=True),
        sa.Column("erased_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "operator_actions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime, nullable=False),
        sa.Column("actor", sa.String(250), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("email", sa.String(320)),
        sa.Column("email_hash", sa.String(64)),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("detail", sa.Text),
    )
    op.create_index("ix_operator_actions_email", "operator_actions", ["email"])
    op.create_index("ix_operator_actions_email_hash", "operator_actions", ["email_hash"])


def downgrade() -> None:
    op.drop_table("operator_actions")
    op.drop_table("erased_contacts")
    op.drop_index("ix_send_attempts_created_at", "send_attempts")
    op.drop_index("ix_sent_contacts_status", "sent_contacts")
    with op.batch_alter_table("sent_contacts") as batch:
        batch.drop_column("source_line")
