"""The operator list's indexes (0012) hold contacts at rest only; two more hold those in flight.

A run writes a contact's row at its claim, at each resend and when it settles; none of these updates is
heap-only (the state is indexed), so each wrote an entry in every index of ``sent_contacts``: about 2.2M
entries in each of the list's three indexes for a 1M-contact run. Now the three hold contacts at rest
(any state but claimed, sending, blocked), which get their entry once, when they settle, and two indexes
on (status, updated_at, email) and (run_id, updated_at, email) hold the contacts in flight: the list
merges the parts (``welcome_mailer.contact_list``), each page still read in order from indexes.

On a large ledger the new indexes take minutes to build (10M contacts on Postgres); meanwhile the table
takes no writes. They are built before the old ones are dropped, so the table is locked against reads
(a DROP INDEX) only from the first drop to the commit: run it between runs.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | Sequence[str] | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

IN_FLIGHT = sa.text("status IN ('claimed', 'sending', 'blocked')")
AT_REST = sa.text("status NOT IN ('claimed', 'sending', 'blocked')")
OLD = {  # 0012's
    "ix_sent_contacts_updated": ["updated_at", "email"],
    "ix_sent_contacts_status_updated": ["status", "updated_at", "email"],
    "ix_sent_contacts_run_updated": ["run_id", "updated_at", "email"],
}
NEW = {
    "ix_sent_contacts_at_rest_updated": (["updated_at", "email"], AT_REST),
    "ix_sent_contacts_at_rest_status_updated": (["status", "updated_at", "email"], AT_REST),
    "ix_sent_contacts_at_rest_run_updated": (["run_id", "updated_at", "email"], AT_REST),
    "ix_sent_contacts_in_flight_status_updated": (["status", "updated_at", "email"], IN_FLIGHT),
    "ix_sent_contacts_in_flight_run_updated": (["run_id", "updated_at", "email"], IN_FLIGHT),
}


def upgrade() -> None:
    for name, (columns, where) in NEW.items():
        op.create_index(name, "sent_contacts", columns, postgresql_where=where, sqlite_where=where)
    for name in OLD:
        op.drop_index(name, "sent_contacts")


def downgrade() -> None:
    for name, columns in OLD.items():
        op.create_index(name, "sent_contacts", columns)
    for name in NEW:
        op.drop_index(name, "sent_contacts")
