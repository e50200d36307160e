"""The operator list's indexes (0012) hold contacts at rest only, and one more index holds those in flight.

A run writes a contact's row at its claim, at each resend and when it settles; none of these updates is
heap-only (the state is indexed), so each wrote an entry in every index of ``sent_contacts``: about 2.2M
entries in each of the list's three indexes for a 1M-contact run. Now the three hold contacts at rest
(any state but claimed, sending, blocked), which get their entry once, when they settle, and
``ix_sent_contacts_in_flight_status_updated`` on (status, updated_at, email) holds those a run is
sending: the list merges the parts (``welcome_mailer.contact_list``), each page still read in order from
indexes. The lean
program on the ledger's tables (``make bench``) at 1M on Postgres, back to back: 122.8 and 119.9 s
before, 116.2 and 115.4 s after.

On a large ledger this rebuilds the three indexes (minutes at 10M contacts on Postgres, the table
locked against writes meanwhile): run it between runs.

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
# 0012's index -> its at-rest successor, on the same columns
RENAMED = {
    "ix_sent_contacts_updated": ("ix_sent_contacts_at_rest_updated", ["updated_at", "email"]),
    "ix_sent_contacts_status_updated": ("ix_sent_contacts_at_rest_status_updated", ["status", "updated_at", "email"]),
    "ix_sent_contacts_run_updated": ("ix_sent_contacts_at_rest_run_updated", ["run_id", "updated_at", "email"]),
}


def upgrade() -> None:
    for old, (new, columns) in RENAMED.items():
        op.drop_index(old, "sent_contacts")
        op.create_index(new, "sent_contacts", columns, postgresql_where=AT_REST, sqlite_where=AT_REST)
    op.create_index(
        "ix_sent_contacts_in_flight_status_updated",
        "sent_contacts",
        ["status", "updated_at", "email"],
        postgresql_where=IN_FLIGHT,
        sqlite_where=IN_FLIGHT,
    )


def downgrade() -> None:
    op.drop_index("ix_sent_contacts_in_flight_status_updated", "sent_contacts")
    for old, (new, columns) in RENAMED.items():
        op.drop_index(new, "sent_contacts")
        op.create_index(old, "sent_contacts", columns)
