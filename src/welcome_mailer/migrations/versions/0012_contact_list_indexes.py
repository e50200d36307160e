"""The operator's list of contacts (issue 33), paged by keyset on (updated_at, email): one index per way
it is read, so a filtered page reads its 51 rows from an index in order, whatever the ledger's size.

- ``ix_sent_contacts_updated`` on (updated_at, email): the whole list, by last change.
- ``ix_sent_contacts_status_updated`` on (status, updated_at, email): the list of one state. It replaces
  ``ix_sent_contacts_status`` (status), which the overview's count per state no longer used: at 10M
  contacts Postgres counts through ``ix_sent_contacts_run_status_batch`` (63 MB, index-only), with or
  without it (``make bench-ui``: overview 1.24 s median both ways on a loaded machine).
- ``ix_sent_contacts_run_updated`` on (run_id, updated_at, email): the list of one run's contacts.

The price: an update that changes a contact's state (claim, outcome) writes two more index entries
(six indexes instead of four, all already touched by such an update, which is never heap-only).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06

"""

from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_sent_contacts_updated", "sent_contacts", ["updated_at", "email"])
    op.create_index("ix_sent_contacts_status_updated", "sent_contacts", ["status", "updated_at", "email"])
    op.create_index("ix_sent_contacts_run_updated", "sent_contacts", ["run_id", "updated_at", "email"])
    op.drop_index("ix_sent_contacts_status", "sent_contacts")


def downgrade() -> None:
    op.create_index("ix_sent_contacts_status", "sent_contacts", ["status"])
    op.drop_index("ix_sent_contacts_run_updated", "sent_contacts")
    op.drop_index("ix_sent_contacts_status_updated", "sent_contacts")
    op.drop_index("ix_sent_contacts_updated", "sent_contacts")
