"""The ledger's tables. Alembic migrations (``welcome_mailer/migrations``) create and change them; this
module describes the current head, for the code's queries and for ``alembic check``.

- ``sent_contacts``: one row per normalised email, owned by one run at a time; ``attempts`` numbers its
  latest attempt, whose row says how far that message got.
- ``send_attempts``: one row per message, written BEFORE the provider is called, keyed by (email, attempt).
- ``ledger_runs``: the runs that own contacts, with a lease renewed by every task of the run.
- ``staged_contacts``: a run's parsed, de-duplicated contacts, waiting to be claimed.
- ``outcome_inbox``: outcome events that matched no recorded send yet (too early, or unknown).
- ``provider_events``: every request a provider's webhook made that passed its signature check, as
  received, stored before it is answered (audit, and the events that could not be read).
- ``erased_contacts``: keyed hashes of erased addresses (GDPR art. 17), so they stay deduplicated and
  are never emailed again; ``operator_actions``: the audit trail of suppress, erase and release (and of
  template test sends).
- ``webhook_tokens``: signature tokens a provider's webhook already used (Mailgun's), kept until their
  signed timestamp is too old to be accepted anyway, so a captured signature is honoured once.
- ``run_templates``: the template each run uses, snapshot at parse (its content and hash): every send and
  resend of the run renders this copy, whatever happens to the files meanwhile. It is what each attempt
  was rendered from: an attempt's ``run_id`` is the run that sends it (a take-over moves the attempt to
  the run that then sends it), and a run's snapshot never changes.
- ``processed_files``: the drop folder's memory of file contents (``welcome_mailer.dropzone``).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, DateTime, Float, Index, Integer, MetaData, String, Table, Text, text

metadata = MetaData()
# A send_attempts row without a provider message id: not accepted yet (pending, dispatched), or refused or
# unconfirmed (few).
UNACCEPTED = text("provider_message_id IS NULL")

sent_contacts = Table(
    "sent_contacts",
    metadata,
    Column("email", String(320), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),  # every attempt ever; numbers the next attempt
    Column("claim_attempts", Integer, nullable=False),  # attempts under the current claim; <= max_attempts
    Column("run_id", String(250), nullable=False),  # the owning run
    Column("batch_no", Integer),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    Column("source_line", Integer),  # the line of the owning run's file it came from (NULL: before 0004)
    # The other columns of its row the owning run's template uses, JSON (contacts.encode_fields), for its
    # sends and resends: NULL when the template uses none (migration 0013).
    Column("fields", Text),
    Index("ix_sent_contacts_run_status_batch", "run_id", "status", "batch_no"),  # a run's contacts by state
    # The operator's list, paged by (updated_at, email): whole, by state, by run (migration 0012). The UI's
    # contacts per state are an index-only count through ix_sent_contacts_run_status_batch.
    Index("ix_sent_contacts_updated", "updated_at", "email"),
    Index("ix_sent_contacts_status_updated", "status", "updated_at", "email"),
    Index("ix_sent_contacts_run_updated", "run_id", "updated_at", "email"),
)

send_attempts = Table(
    "send_attempts",
    metadata,
    Column("email", String(320), primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("idempotency_key", String(100), nullable=False, unique=True),
    Column("run_id", String(250), nullable=False),
    Column("status", String(16), nullable=False),
    Column("provider_message_id", String(100)),
    Column("error", String(500)),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    # No index names status: an outcome's update is then heap-only on Postgres (migration 0007 says why).
    # Attempts not accepted yet; the NULL as a second column makes SQLite's planner pick it (migration 0014).
    Index(
        "ix_send_attempts_unaccepted",
        "run_id",
        "provider_message_id",
        postgresql_where=UNACCEPTED,
        sqlite_where=UNACCEPTED,
    ),
    Index("ix_send_attempts_run", "run_id"),  # a run's messages, for its summary
    Index("ix_send_attempts_provider_message_id", "provider_message_id"),
    Index("ix_send_attempts_created_at", "created_at"),  # the UI's messages per day, over recent days only
    postgresql_with={"fillfactor": 50},  # room on the page for the outcome's row version (heap-only update)
)

ledger_runs = Table(
    "ledger_runs",
    metadata,
    Column("run_id", String(250), primary_key=True),
    Column("lease_expires_at", DateTime, nullable=False),
    Column("finished_at", DateTime),
    Column("created_at", DateTime, nullable=False),
    Column("source_file", Text),  # the contact list the run read, as the person gave it (parse records it)
)

staged_contacts = Table(
    "staged_contacts",
    metadata,
    Column("run_id", String(250), primary_key=True),
    Column("email", String(320), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("line_no", Integer, nullable=False),
    Column("fields", Text),  # as sent_contacts.fields
)

outcome_inbox = Table(
    "outcome_inbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("provider_message_id", String(100), index=True),
    Column("idempotency_key", String(100), index=True),
    Column("outcome", String(16), nullable=False),
    Column("source", String(40), nullable=False),
    Column("detail", Text),
    Column("received_at", DateTime, nullable=False),
)

provider_events = Table(
    "provider_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("provider", String(40), nullable=False),  # sendgrid, ses, postmark, mailgun, mock
    Column("received_at", DateTime, nullable=False),
    Column("body", Text, nullable=False),  # the raw request body
    Column("events", Integer, nullable=False),  # events the request carried
    Column("recorded", Integer, nullable=False),  # outcome events handed to the ledger
    Column("ignored", Integer, nullable=False),  # events that change nothing (deferred, opened, ...)
    Column("unparsed", Integer, nullable=False),  # events that could not be read: kept here, counted
    Column("detail", Text),  # why events could not be read
    Index("ix_provider_events_received", "received_at"),
)

erased_contacts = Table(
    "erased_contacts",
    metadata,
    Column("email_hash", String(64), primary_key=True),  # HMAC-SHA256 of the normalised address, hex
    Column("erased_at", DateTime, nullable=False),
)

operator_actions = Table(
    "operator_actions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", DateTime, nullable=False),
    Column("actor", String(250), nullable=False),  # the Airflow user, or "cli:<os user>"
    Column("action", String(32), nullable=False),  # suppress | erase | release | test_send
    Column("email", String(320), index=True),  # NULL once the contact is erased
    Column("email_hash", String(64), index=True),  # set when the contact is erased
    Column("reason", Text, nullable=False),
    Column("detail", Text),
)

run_templates = Table(
    "run_templates",
    metadata,
    Column("run_id", String(250), primary_key=True),
    Column("name", String(64), nullable=False),
    Column("hash", String(64), nullable=False),  # SHA-256 of the content (welcome_mailer.templates)
    Column("subject", Text, nullable=False),
    Column("text", Text, nullable=False),
    Column("html", Text),
    Column("origin", Text, nullable=False),  # where it was read from (a directory, or "built-in")
    Column("taken_at", DateTime, nullable=False),
)

# The drop folder's memory of file contents (welcome_mailer.dropzone), so a file dropped again is not
# processed twice, whatever its name.
processed_files = Table(
    "processed_files",
    metadata,
    Column("sha256", String(64), primary_key=True),
    Column("file_name", String(500), nullable=False),
    Column("status", String(16), nullable=False),  # processing | done | failed
    Column("run_id", String(250)),
    Column("updated_at", DateTime, nullable=False),
)

# The provider's limits (welcome_mailer.ledger.limits), shared by every send task of every run through
# this database. Times are seconds since the epoch by the database's own clock (one clock for every
# worker). ``send_limits``: per provider account, when its next send slot starts (the rate);
# ``send_quota_usage``: messages sent per time bucket (a 1440th of the quota's window), for the rolling
# quota; ``run_limits``: each run's figures (throttled requests, waits) and its reputation guard's stop.
send_limits = Table(
    "send_limits",
    metadata,
    Column("limit_key", String(250), primary_key=True),  # the provider connection's id
    Column("next_slot_at", Float, nullable=False),
)

send_quota_usage = Table(
    "send_quota_usage",
    metadata,
    Column("limit_key", String(250), primary_key=True),
    Column("bucket_no", BigInteger, primary_key=True, autoincrement=False),  # epoch // bucket length
    Column("messages", Integer, nullable=False),
)

run_limits = Table(
    "run_limits",
    metadata,
    Column("run_id", String(250), primary_key=True),
    Column("throttled_requests", Integer, nullable=False),  # requests the provider throttled (429, 454)
    Column("throttle_wait_seconds", Float, nullable=False),  # send tasks' waits after those
    Column("rate_wait_seconds", Float, nullable=False),  # waits for a send slot (max_messages_per_second)
    Column("quota_wait_seconds", Float, nullable=False),  # waits for the rolling quota to free
    Column("quota_resumes_at", DateTime),  # naive UTC: when the quota lets the run go on (while it waits)
    Column("quota_paused_at", DateTime),  # since when it waits
    Column("guard_stopped_at", DateTime),  # the reputation guard stopped the run's sending
    Column("guard_detail", Text),  # its figures, as JSON
    Column("guard_count_due_at", DateTime),  # naive UTC: when the run's outcomes are next counted (NULL: now)
)

webhook_tokens = Table(
    "webhook_tokens",
    metadata,
    Column("provider", String(40), primary_key=True),
    Column("token_hash", String(64), primary_key=True),  # SHA-256 of the token, hex: any length fits
    Column("expires_at", DateTime, nullable=False),  # signed timestamp + max age: refused as too old after
    Index("ix_webhook_tokens_expires_at", "expires_at"),
)
