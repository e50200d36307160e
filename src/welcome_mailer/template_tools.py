"""Trying a template before a run: a preview for a row of a contact file (or sample values), and a test
send of one rendered message to an address the operator types. The UI's template page
(``welcome_mailer.web.ui``) and ``welcome-mailer template ...`` both call these.

A test send goes through the configured provider like any message, but it is nobody's welcome: it is
never a contact's attempt, never counted in a run, and is recorded in the audit trail (``operator_actions``,
action ``test_send``, the address in its email column (so an erase clears it): who, when, which
template and version, what the provider said).
Its idempotency key starts with ``test-``: no bounce report or webhook can match it to a contact.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path

from welcome_mailer.contacts import Contact, ContactReader, InvalidEmail, normalise_email, normalise_name
from welcome_mailer.ledger import Ledger
from welcome_mailer.ledger.schema import operator_actions
from welcome_mailer.templates import (
    CompiledTemplate,
    RefusedMessage,
    TemplateSource,
    compile_template,
    sample_values,
)
from welcome_mailer.transports import EmailProvider, OutgoingMessage
from welcome_mailer.unsubscribe import UnsubscribeSettings
from welcome_mailer.vocabulary import utcnow

TEST_SEND = "test_send"


@dataclass(frozen=True)
class Preview:
    template: str
    version: str
    name: str
    email: str
    subject: str = ""
    text: str = ""
    html: str | None = None
    refused: str | None = None  # why this contact would be rejected (then nothing is rendered)
    source_line: int | None = None


def contact_at(path: Path | str, line_no: int, template: CompiledTemplate) -> Contact:
    """The contact the parser reads at ``line_no`` of a file (streamed: it stops there), with the columns
    ``template`` uses. Raises TemplateError when the file lacks one of those columns, LookupError when
    that line holds no valid contact."""
    reader = ContactReader(path, chunk_size=1000)
    template.check_columns(reader.columns(), str(path))
    for chunk in reader.chunks(template.columns):
        for contact in chunk.contacts:
            if contact.line_no == line_no:
                return contact
        for row in chunk.rejected:
            if row.line_no == line_no:
                raise LookupError(f"line {line_no} is rejected by the parser: {row.reason}")
        if max((c.line_no for c in chunk.contacts), default=0) > line_no:
            break
    raise LookupError(
        f"line {line_no} of {path} holds no contact (a blank line, a header, a duplicate, or past the end)"
    )


def sample_contact(template: CompiledTemplate, name: str | None = None, email: str | None = None) -> Contact:
    """Values typed by the operator (normalised as the parser would), or the sample ones; the sample
    row's other columns (the seed format's) that ``template`` uses."""
    values = sample_values()
    fields = {column: values[column] for column in template.columns if column in values} or None
    return Contact(
        normalise_email(email or values["email"]), normalise_name(values["name"] if name is None else name), 0, fields
    )


def preview(
    source: TemplateSource,
    contact: Contact,
    unsubscribe: UnsubscribeSettings | None = None,
    recipient: str | None = None,
) -> Preview:
    """The template rendered for one contact (``recipient``: a test send's address, whose the unsubscribe
    link then is, never the contact's). Raises TemplateError (it cannot be used at all)."""
    compiled = compile_template(source, unsubscribe)
    base = {"template": source.name, "version": source.version, "name": contact.name, "email": contact.email}
    base["source_line"] = contact.line_no or None
    try:
        rendered = compiled.render(contact.email, contact.name, recipient, contact.fields)
    except RefusedMessage as exc:
        return Preview(**base, refused=str(exc))
    return Preview(**base, subject=rendered.subject, text=rendered.text, html=rendered.html)


def test_send(
    ledger: Ledger,
    transport: EmailProvider,
    source: TemplateSource,
    contact: Contact,
    to: str,
    actor: str,
    unsubscribe: UnsubscribeSettings | None = None,
) -> dict:
    """Send the template rendered for ``contact`` to ``to`` (the operator's own address), once, and audit
    it. Returns what the provider said. Raises InvalidEmail, TemplateError, RefusedMessage."""
    address = normalise_email(to)
    shown = preview(source, contact, unsubscribe, recipient=address)
    if shown.refused:
        raise RefusedMessage(shown.refused)
    key = f"test-{uuid.uuid4().hex}"
    message = OutgoingMessage(address, shown.subject, shown.text, key, "", shown.html)
    [result] = transport.send_batch([message])
    outcome = {
        "to": address,
        "template": source.name,
        "template_hash": source.hash,
        # Not the contact's address: an erase (GDPR) clears a contact from the audit trail's email column,
        # never from a detail's text.
        "rendered_for": f"line {contact.line_no} of a file" if contact.line_no else "typed or sample values",
        "idempotency_key": key,
        "provider_message_id": result.message_id,
        "error": result.error,
    }
    with ledger.engine.begin() as conn:
        conn.execute(
            operator_actions.insert().values(
                at=utcnow(),
                actor=actor,
                action=TEST_SEND,
                # The address the test went to: shown on its page, and cleared by an erase (GDPR) as any
                # audit row of that address is.
                email=address,
                reason=f"test send of template {source.name} ({source.version})",
                detail=json.dumps({k: v for k, v in outcome.items() if k != "to"}),
            )
        )
    return outcome


__all__ = ["InvalidEmail", "Preview", "contact_at", "preview", "sample_contact", "test_send"]
