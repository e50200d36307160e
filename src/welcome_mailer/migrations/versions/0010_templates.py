"""The operator's templates (issue 31): each run's template snapshot, which every attempt of the run used.

- ``run_templates``: the template a run uses, stored at parse (name, content, SHA-256 of the content), so
  that every send and resend of the run renders the same version even if the files change mid-run.
  An attempt's template and version are its run's (``send_attempts.run_id``): the run that sends an
  attempt renders it from this snapshot, which is written once. No column is added to ``send_attempts``:
  the million-row COPY of attempts stays as narrow as it is, and a take-over (which moves an unsent
  attempt to the run that sends it) needs no second update. Runs before this revision have no row: the
  built-in text.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "run_templates",
        sa.Column("run_id", sa.String(250), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("html", sa.Text),
        sa.Column("origin", sa.Text, nullable=False),
        sa.Column("taken_at", sa.DateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("run_templates")
