"""The contact list a run read, recorded in the ledger when the run parses it (``ledger_runs.source_file``),
so a contact's page and the run list name the file from the ledger, not from the run's report file.
Runs before this revision keep no file name.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("ledger_runs") as batch:
        batch.add_column(sa.Column("source_file", sa.Text()))


def downgrade() -> None:
    with op.batch_alter_table("ledger_runs") as batch:
        batch.drop_column("source_file")
