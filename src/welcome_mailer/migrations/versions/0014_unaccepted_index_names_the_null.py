"""``ix_send_attempts_unaccepted`` on (run_id, provider_message_id), still partial (``provider_message_id IS
NULL``): the same entries, each with a NULL more, so that SQLite's planner picks it.

A run's attempts not accepted yet (``queries.unaccepted_attempts``: a poke's count of the messages without
an outcome, the run's due contacts, batch numbering) are asked for by ``run_id = ? AND provider_message_id
IS NULL``. On (run_id) alone, the partial index and ``ix_send_attempts_run`` matched that equally for
SQLite's planner, which has no statistics on the ledger, and it took ``ix_send_attempts_run``: every
attempt of the run, its row read for the message id. At 1M contacts each such count took 0.15 s instead
of next to nothing, about 8 s of a run (a poke counts once a poll). With the NULL as a second column, the
partial index matches both terms (SQLite treats ``IS NULL`` as an equality) and wins. Postgres chose by
its statistics already. No index names ``status`` still (0007): an outcome's update stays heap-only.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | Sequence[str] | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNACCEPTED = sa.text("provider_message_id IS NULL")
INDEX = "ix_send_attempts_unaccepted"


def upgrade() -> None:
    op.drop_index(INDEX, "send_attempts")
    op.create_index(
        INDEX, "send_attempts", ["run_id", "provider_message_id"], postgresql_where=UNACCEPTED, sqlite_where=UNACCEPTED
    )


def downgrade() -> None:
    op.drop_index(INDEX, "send_attempts")
    op.create_index(INDEX, "send_attempts", ["run_id"], postgresql_where=UNACCEPTED, sqlite_where=UNACCEPTED)
