"""A contact's row is written when its state changes, not at every step of its message: ``record_sent``
writes only the attempt (issue 14: one row version fewer per message, under ``sent_contacts``' 3 indexes).

- Contacts in ``sent`` become ``sending``: the contact's latest attempt (``attempts``) says how far its
  message got (``pending`` / ``dispatched``: not accepted yet; ``sent``: accepted, no outcome yet).
  Rows that two fixed bugs of 0005's code could leave are reconciled first, so the contact's state
  and its latest attempt's agree: a ``sent`` contact whose latest attempt was never recorded (a dead
  run's late reply, before the attempt's run guard) gets the contact's message id and run on the
  attempt, as accepted; one whose latest attempt already has its outcome takes that outcome.
- ``sent_contacts.provider_message_id`` (the latest attempt's, a copy) is dropped: it is on the attempt.
- ``ix_send_attempts_run_status`` on (run_id, status) replaces ``ix_send_attempts_run`` (run_id): a run's
  attempts not accepted yet are what its send tasks and resends still owe, found without a scan.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LATEST_ATTEMPT = "a.email = sent_contacts.email AND a.attempt = sent_contacts.attempts"


def upgrade() -> None:
    sent_contact = (
        "FROM sent_contacts c WHERE c.email = send_attempts.email AND c.attempts = send_attempts.attempt "
        "AND c.status = 'sent'"
    )
    for column in ("provider_message_id", "run_id"):
        op.execute(
            f"UPDATE send_attempts SET {column} = (SELECT c.{column} {sent_contact}) "
            f"WHERE status IN ('pending', 'dispatched') AND EXISTS (SELECT 1 {sent_contact})"
        )
    op.execute(
        f"UPDATE send_attempts SET status = 'sent' WHERE status IN ('pending', 'dispatched') "
        f"AND EXISTS (SELECT 1 {sent_contact})"
    )
    op.execute(
        "UPDATE sent_contacts SET status = (SELECT CASE a.status WHEN 'refused' THEN 'bounced' ELSE a.status END "
        f"FROM send_attempts a WHERE {LATEST_ATTEMPT}) "
        f"WHERE status = 'sent' AND EXISTS (SELECT 1 FROM send_attempts a WHERE {LATEST_ATTEMPT} "
        "AND a.status NOT IN ('sent', 'pending', 'dispatched'))"
    )
    op.execute("UPDATE sent_contacts SET status = 'sending' WHERE status = 'sent'")
    with op.batch_alter_table("sent_contacts") as batch:
        batch.drop_column("provider_message_id")
    op.create_index("ix_send_attempts_run_status", "send_attempts", ["run_id", "status"])
    op.drop_index("ix_send_attempts_run", "send_attempts")


def downgrade() -> None:
    op.create_index("ix_send_attempts_run", "send_attempts", ["run_id"])
    op.drop_index("ix_send_attempts_run_status", "send_attempts")
    with op.batch_alter_table("sent_contacts") as batch:
        batch.add_column(sa.Column("provider_message_id", sa.String(100)))
    op.execute(
        "UPDATE sent_contacts SET provider_message_id = "
        f"(SELECT a.provider_message_id FROM send_attempts a WHERE {LATEST_ATTEMPT}) "
        f"WHERE EXISTS (SELECT 1 FROM send_attempts a WHERE {LATEST_ATTEMPT} AND a.provider_message_id IS NOT NULL)"
    )
    op.execute(
        "UPDATE sent_contacts SET status = 'sent' WHERE status = 'sending' AND EXISTS "
        f"(SELECT 1 FROM send_attempts a WHERE {LATEST_ATTEMPT} AND a.status = 'sent')"
    )
