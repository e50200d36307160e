"""The other columns of a contact's row its run's template uses (issue 31): ``staged_contacts.fields`` and
``sent_contacts.fields``, JSON text of the values the template needs beyond name and email (a city, a
zip code, a header's column), carried from parse through claim to the sends and to the resends of blocked
contacts, which render from the ledger. NULL when the template uses no other column (the built-in
``welcome`` among them): nothing is written for such a run.

Both nullable without a default: on Postgres adding them rewrites nothing.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("staged_contacts", "sent_contacts")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("fields", sa.Text()))


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("fields")
