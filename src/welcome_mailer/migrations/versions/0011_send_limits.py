"""The provider's limits (issue 32): a send rate and a rolling quota shared by every send task of every
run through the ledger's database, and each run's figures.

- ``send_limits``: per provider account (the connection's id), when its next send slot starts.
- ``send_quota_usage``: messages per time bucket, for the rolling quota (max_messages_per_24h).
- ``run_limits``: per run, throttled requests, the time spent waiting for the rate and the quota, and the
  reputation guard's stop with its figures.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "send_limits",
        sa.Column("limit_key", sa.String(250), primary_key=True),
        sa.Column("next_slot_at", sa.Float, nullable=False),
    )
    op.create_table(
        "send_quota_usage",
        sa.Column("limit_key", sa.String(250), primary_key=True),
        sa.Column("bucket_no", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("messages", sa.Integer, nullable=False),
    )
    op.create_table(
        "run_limits",
        sa.Column("run_id", sa.String(250), primary_key=True),
        sa.Column("throttled_requests", sa.Integer, nullable=False),
        sa.Column("throttle_wait_seconds", sa.Float, nullable=False),
        sa.Column("rate_wait_seconds", sa.Float, nullable=False),
        sa.Column("quota_wait_seconds", sa.Float, nullable=False),
        sa.Column("quota_resumes_at", sa.DateTime),
        sa.Column("quota_paused_at", sa.DateTime),
        sa.Column("guard_stopped_at", sa.DateTime),
        sa.Column("guard_detail", sa.Text),
    )


def downgrade() -> None:
    op.drop_table("run_limits")
    op.drop_table("send_quota_usage")
    op.drop_table("send_limits")
