"""The reputation guard's count, spaced per run instead of per task: ``run_limits.guard_count_due_at``,
when the run's outcomes are next due to be counted (naive UTC; NULL: now).

The guard's count reads every message of the run (no index names an attempt's state, so that an outcome's
update stays heap-only): 0.4 s at a million messages on SQLite, 1-2 s on Postgres. Every task counted at
its first check, then once GUARD_COUNT_SPACING times its own last count's duration had passed: each of a
1M run's 8 send tasks, and every poke of its two sensors, counted as it started, a few seconds apart.
Now a count that took 0.25 s or more (a large run's) writes when the run's next count is due, and every
task of the run reads that with the run's stop flag (the one row it read already) and counts only once it
is due. A quicker count writes nothing: each task still counts as it starts.

Nullable, no default: on Postgres adding it rewrites nothing.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | Sequence[str] | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("run_limits") as batch:
        batch.add_column(sa.Column("guard_count_due_at", sa.DateTime))


def downgrade() -> None:
    with op.batch_alter_table("run_limits") as batch:
        batch.drop_column("guard_count_due_at")
