"""One index for a run's contacts by state and batch: ``ix_sent_contacts_run_status_batch`` on (run_id,
status, batch_no) replaces ``ix_sent_contacts_run_status`` (run_id, status) and
``ix_sent_contacts_run_batch`` (run_id, batch_no). Every query of a run's contacts names its state, and
a send task's names its batch too, so the one index serves both; every contact row version written (a
claim, a send, an outcome) then costs one index entry fewer (issue 14).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03

"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_sent_contacts_run_status_batch", "sent_contacts", ["run_id", "status", "batch_no"])
    op.drop_index("ix_sent_contacts_run_status", "sent_contacts")
    op.drop_index("ix_sent_contacts_run_batch", "sent_contacts")


def downgrade() -> None:
    op.create_index("ix_sent_contacts_run_batch", "sent_contacts", ["run_id", "batch_no"])
    op.create_index("ix_sent_contacts_run_status", "sent_contacts", ["run_id", "status"])
    op.drop_index("ix_sent_contacts_run_status_batch", "sent_contacts")
