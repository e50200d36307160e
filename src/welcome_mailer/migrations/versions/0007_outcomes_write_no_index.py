"""An attempt's outcome is written without touching an index (issue 14): no index of ``send_attempts``
names ``status`` any more, so the update that records a message's outcome (``sent`` -> delivered,
bounced, blocked) is a heap-only (HOT) update on Postgres, and on SQLite an update of the row alone.

- ``ix_send_attempts_unaccepted`` on (run_id), partial: only attempts without a provider message id
  (``pending`` and ``dispatched``, the rare refused and unconfirmed ones), so a run's attempts not
  accepted yet are found as before, from an index that stays as small as what is still owed.
- ``ix_send_attempts_run`` on (run_id): a run's messages, for its summary.
- Both replace ``ix_send_attempts_run_status`` on (run_id, status), which got a new entry at every
  change of an attempt's state: five index entries for every outcome, one in each of the table's
  indexes, as Postgres writes a new entry in every index for an update that changes an indexed column.
- Postgres: ``send_attempts`` pages are filled to half (fillfactor 50): every row has room on its page
  for one more version of itself, the outcome's, even while a poll's read snapshot keeps the versions
  it replaces. Measured by ``include/bench/ledger_load.py`` (400k contacts, 400k outcomes): with fillfactor 70
  63% of the outcomes' updates were heap-only, with 50 99%; recording the outcomes took 26.4 s before
  this revision, 23.4 s with 70 and 21.4 s with 50. The table takes twice the pages.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNACCEPTED = sa.text("provider_message_id IS NULL")


def upgrade() -> None:
    op.create_index(
        "ix_send_attempts_unaccepted", "send_attempts", ["run_id"], postgresql_where=UNACCEPTED, sqlite_where=UNACCEPTED
    )
    op.create_index("ix_send_attempts_run", "send_attempts", ["run_id"])
    op.drop_index("ix_send_attempts_run_status", "send_attempts")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE send_attempts SET (fillfactor = 50)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE send_attempts RESET (fillfactor)")
    op.create_index("ix_send_attempts_run_status", "send_attempts", ["run_id", "status"])
    op.drop_index("ix_send_attempts_run", "send_attempts")
    op.drop_index("ix_send_attempts_unaccepted", "send_attempts")
