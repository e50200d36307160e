"""Baseline: the ledger as the versions before Alembic made it (their ``ledger_schema`` version 1).

Revision ID: 0001
Revises:
Create Date: 2026-11-29

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sent_contacts",
        sa.Column("email", sa.String(320), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("claim_attempts", sa.Integer, nullable=False),
        sa.Column("run_id", sa.String(250), nullable=False),
        sa.Column("batch_no", sa.Integer),
        sa.Column("provider_message_id", sa.String(100)),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_sent_contacts_run_status", "sent_contacts", ["run_id", "status"])
    op.create_index("ix_sent_contacts_run_batch", "sent_contacts", ["run_id", "batch_no"])
    op.create_table(
        "send_attempts",
        sa.Column("email", sa.String(320), primary_key=True),
        sa.Column("attempt", sa.Integer, primary_key=True),
        sa.Column("idempotency_key", sa.String(100), nullable=False, unique=True),
        sa.Column("run_id", sa.String(250), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("provider_message_id", sa.String(100)),
        sa.Column("error", sa.String(500)),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_send_attempts_run", "send_attempts", ["run_id"])
    op.create_table(
        "ledger_runs",
        sa.Column("run_id", sa.String(250), primary_key=True),
        sa.Column("lease_expires_at", sa.DateTime, nullable=False),
        sa.Column("finished_at", sa.DateTime),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "staged_contacts",
        sa.Column("run_id", sa.String(250), primary_key=True),
        sa.Column("email", sa.String(320), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("line_no", sa.Integer, nullable=False),
    )
    op.create_table(
        "processed_files",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("file_name", sa.String(500), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("run_id", sa.String(250)),
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )
    op.create_table("ledger_schema", sa.Column("version", sa.Integer, primary_key=True))
    op.execute("INSERT INTO ledger_schema (version) VALUES (1)")


def downgrade() -> None:
    for table in ("ledger_schema", "processed_files", "staged_contacts", "ledger_runs", "send_attempts"):
        op.drop_table(table)
    op.drop_table("sent_contacts")
