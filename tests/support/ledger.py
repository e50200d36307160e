"""Ledger moves the tests play, without the pipeline: stage and claim contacts, send them, read states back."""

from __future__ import annotations

from sqlalchemy import select

from welcome_mailer.contacts import Contact
from welcome_mailer.ledger import (
    AcceptedAttempt,
    Ledger,
    send_attempts,
    sent_contacts,
    shown_status,
    with_latest_attempt,
)
from welcome_mailer.vocabulary import OutcomeEvent


def contacts(*emails: str) -> list[Contact]:
    return [Contact(email, f"Name {email.split('@')[0]}", line) for line, email in enumerate(emails, 1)]


def stage_and_claim(
    ledger: Ledger, run_id: str, emails, batch_size: int = 500, max_batches: int = 1024, **claim_options
):
    ledger.renew_lease(run_id)
    ledger.clear_stage(run_id)
    ledger.stage(run_id, contacts(*emails))
    return ledger.claim(run_id, batch_size, max_batches, **claim_options)


def statuses(ledger: Ledger) -> dict[str, tuple[str, str, int]]:
    """Every contact's state as shown (a sending contact whose latest attempt was accepted: sent), its run
    and its attempts."""
    with ledger.engine.connect() as conn:
        rows = conn.execute(
            select(sent_contacts.c.email, shown_status(), sent_contacts.c.run_id, sent_contacts.c.attempts).select_from(
                with_latest_attempt()
            )
        )
        return {email: (status, run_id, attempts) for email, status, run_id, attempts in rows}


def send_everything(ledger: Ledger, run_id: str, batches, outcome: str | dict[str, str]) -> None:
    """Play the ESP: accept every attempt, then report the given outcome(s)."""
    for batch_no in batches:
        attempts = ledger.start_attempts(run_id, batch_no)
        ledger.record_sent(run_id, [AcceptedAttempt(a.email, a.attempt, f"id-{a.email}-{a.attempt}") for a in attempts])
    pending = list(ledger.pending_messages(run_id))
    outcome_of = (lambda m: outcome) if isinstance(outcome, str) else (lambda m: outcome[m.email])
    ledger.record_outcomes([OutcomeEvent(outcome_of(m), provider_message_id=m.message_id) for m in pending])


def sent(ledger, run_id: str, *emails: str) -> dict[str, str]:
    """Claim and send the contacts; returns email -> provider message id."""
    claimed = stage_and_claim(ledger, run_id, list(emails))
    ids = {}
    for batch_no in claimed.batches:
        attempts = ledger.start_attempts(run_id, batch_no)
        ledger.record_sent(run_id, [AcceptedAttempt(a.email, a.attempt, f"m-{a.email}-{a.attempt}") for a in attempts])
        ids.update({a.email: f"m-{a.email}-{a.attempt}" for a in attempts})
    return ids


def attempt_statuses(ledger) -> dict[tuple[str, int], str]:
    with ledger.engine.connect() as conn:
        return {(r.email, r.attempt): r.status for r in conn.execute(select(send_attempts))}


def contact_status(ledger, email: str) -> str:
    return statuses(ledger)[email][0]
