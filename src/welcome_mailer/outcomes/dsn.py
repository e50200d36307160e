"""Outcomes from bounce reports: RFC 3464 delivery status notifications (multipart/report;
report-type=delivery-status) that relays mail to the envelope sender, read from a bounce mailbox over IMAP.

Matching: each report is matched to its attempt by the Message-ID of the returned message (the whole
message or its headers, RFC 3462 / 6522), which the SMTP transport derives from the attempt's idempotency
key. Every relay returns those headers, so no VERP catch-all address or per-message envelope sender is
needed. When a report has no returned headers (some relays cut them), its Original-Envelope-Id (the ENVID
the transport gives MAIL FROM when the relay offers DSN, RFC 3461: the idempotency key), else any of our
Message-IDs quoted in it is used.

| report (per recipient) | outcome |
|---|---|
| Action: failed, Status: 5.x.x | bounced (5.7.x: the transport's ``policy_rejection``, blocked by default) |
| Action: failed, Status: 4.x.x | blocked: a NEW email after the backoff |
| Action: delivered, relayed, expanded | delivered |
| Action: delayed | nothing yet: the relay still tries |

When the relay offers DSN (RFC 3461) the transport asks for success reports too (NOTIFY=SUCCESS,FAILURE),
and a delivery counts as soon as its report (Action: delivered or relayed) is read. A message accepted with
no report within ``settle_seconds`` counts as delivered: relays without DSN, or that ignore NOTIFY=SUCCESS,
report failures only. A report that comes later still counts: a bounce overrules a delivery.

Processed reports are moved to ``processed_folder``; reports that match none of our messages, or that do
not parse, to ``unmatched_folder`` (counted), so each is read once and none stops a run.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import hmac
import imaplib
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from email.message import Message

from welcome_mailer.transports.smtp import message_id, tls_context
from welcome_mailer.vocabulary import (
    BLOCKED,
    BOUNCED,
    DELIVERED,
    TAGGED_KEY_PATTERN,
    OutcomeEvent,
    PendingMessage,
    message_tag,
    split_tagged_key,
    utcnow,
)

log = logging.getLogger(__name__)

KEY_IN_RAW = re.compile(rb"<(" + TAGGED_KEY_PATTERN.encode() + rb")@")
STATUS_PATTERN = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
ENVID_PATTERN = re.compile(rf"(?im)^Original-Envelope-Id:\s*({TAGGED_KEY_PATTERN})\s*$")
TAGGED_KEY_IN_MESSAGE_ID = re.compile(rf"<?({TAGGED_KEY_PATTERN})@")
FETCH_CHUNK = 200
# _quick_report: the top Content-Type, the two parts it reads, a transfer encoding it leaves to the parser
QUICK_TYPE = re.compile(r"(?im)^Content-Type:[ \t]*([a-z0-9.+-]+/[a-z0-9.+-]+)")
QUICK_STATUS_PART = re.compile(r"(?im)^Content-Type:[ \t]*message/delivery-status[ \t]*(;[^\n]*)?$")
QUICK_RETURNED_PART = re.compile(r"(?im)^Content-Type:[ \t]*(text/rfc822-headers|message/rfc822)[ \t]*(;[^\n]*)?$")
QUICK_ENCODED = re.compile(r"(?im)^Content-Transfer-Encoding:[ \t]*(base64|quoted-printable)")
QUICK_MESSAGE_ID = re.compile(r"(?im)^Message-ID:[ \t]*(<[^<>\s]+>)[ \t]*$")


@dataclass(frozen=True)
class RecipientStatus:
    recipient: str  # Final-Recipient's address
    action: str  # failed | delayed | delivered | relayed | expanded
    status: str  # the RFC 3463 code, "5.1.1"
    diagnostic: str = ""


@dataclass(frozen=True)
class DeliveryReport:
    keys: tuple[str, ...]  # the attempts it is about: their keys as quoted, with their tags (``key.tag``) if any
    recipients: tuple[RecipientStatus, ...]


class NotADeliveryReport(ValueError):
    """The mail is not a delivery status notification we can read."""


def parse_report(raw: bytes) -> DeliveryReport:
    """Read one RFC 3464 report. Raises NotADeliveryReport for anything else."""
    return _quick_report(raw) or _parsed_report(raw)


def _quick_report(raw: bytes) -> DeliveryReport | None:
    """The common shape read without the ``email`` package (it costs ~0.5 ms a report, and a mailbox
    holds one report per message when successes are reported): a multipart/report with one 7-bit
    delivery-status part followed by a text/rfc822-headers or message/rfc822 part whose Message-ID is ours.
    None for anything else, which ``_parsed_report`` reads; the tests check both agree on every sample."""
    if not raw.isascii():
        return None
    text = raw.decode("ascii").replace("\r\n", "\n")
    head, _, _ = text.partition("\n\n")
    top = QUICK_TYPE.search(head)
    statuses = list(QUICK_STATUS_PART.finditer(text))
    if top is None or top.group(1).lower() != "multipart/report" or len(statuses) != 1:
        return None
    status_head, _, status_body = text[statuses[0].end() :].partition("\n\n")
    returned = QUICK_RETURNED_PART.search(text, statuses[0].end())
    if returned is None or QUICK_ENCODED.search(status_head):
        return None
    returned_head, _, content = text[returned.end() :].partition("\n\n")
    if QUICK_ENCODED.search(returned_head):
        return None
    body = status_body.split("\n--", 1)[0]
    groups = [_fields(block) for block in re.split(r"\n\s*\n", body.strip()) if block.strip()]
    recipients = tuple(_statuses(groups))
    found = QUICK_MESSAGE_ID.search(content.partition("\n\n")[0].split("\n--", 1)[0])
    key = _tagged_key(found.group(1)) if found else None
    if not recipients or key is None:
        return None
    return DeliveryReport((key,), recipients)


def _parsed_report(raw: bytes) -> DeliveryReport:
    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    status_part = next((p for p in message.walk() if p.get_content_type() == "message/delivery-status"), None)
    if status_part is None:
        raise NotADeliveryReport("no message/delivery-status part")
    recipients = tuple(_recipient_statuses(status_part))
    if not recipients:
        raise NotADeliveryReport("a delivery-status part without a recipient")
    keys = (
        _returned_keys(message) or _envelope_keys(status_part) or sorted({k.decode() for k in KEY_IN_RAW.findall(raw)})
    )
    return DeliveryReport(tuple(keys), recipients)


def _envelope_keys(part: Message) -> list[str]:
    """The key in Original-Envelope-Id: the ENVID the transport gave MAIL FROM (RFC 3461), when the relay
    offers DSN. Used when the returned headers are missing or cut."""
    found = ENVID_PATTERN.search(part.as_string())
    return [found.group(1)] if found else []


def _recipient_statuses(part: Message) -> Iterator[RecipientStatus]:
    """The per-recipient field groups of a delivery-status part (the first group is per-message)."""
    payload = part.get_payload()
    if isinstance(payload, list):  # the email package parses the field groups as header blocks
        groups = [dict((k.lower(), str(v)) for k, v in block.items()) for block in payload]
    else:
        text = payload if isinstance(payload, str) else ""
        groups = [_fields(block) for block in re.split(r"\r?\n\s*\r?\n", text.strip()) if block.strip()]
    yield from _statuses(groups)


def _statuses(groups: list[dict[str, str]]) -> Iterator[RecipientStatus]:
    for fields in groups:
        if "action" not in fields:
            continue
        status = STATUS_PATTERN.search(fields.get("status", ""))
        recipient = fields.get("final-recipient") or fields.get("original-recipient") or ""
        yield RecipientStatus(
            recipient=recipient.rpartition(";")[2].strip().strip("<>").lower(),
            action=fields["action"].strip().lower(),
            status=".".join(status.groups()) if status else "",
            diagnostic=" ".join(fields.get("diagnostic-code", "").split()),
        )


def _fields(block: str) -> dict[str, str]:
    """RFC 822 style fields, with continuation lines, names lower-cased (Exchange writes "Final-recipient")."""
    fields: dict[str, str] = {}
    name = None
    for line in block.splitlines():
        if line[:1] in (" ", "\t") and name:
            fields[name] += " " + line.strip()
        elif ":" in line:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            fields[name] = value.strip()
    return fields


def _returned_keys(message: Message) -> list[str]:
    """Keys from the Message-ID of the returned message (message/rfc822 or text/rfc822-headers part)."""
    keys = []
    for part in message.walk():
        kind = part.get_content_type()
        if kind == "message/rfc822":
            inner = part.get_payload()
            returned = inner[0] if isinstance(inner, list) and inner else None
            value = returned.get("Message-ID", "") if returned is not None else ""
        elif kind == "text/rfc822-headers":
            headers = email.message_from_bytes(part.get_payload(decode=True) or b"", policy=email.policy.compat32)
            value = headers.get("Message-ID", "")
        else:
            continue
        key = _tagged_key(str(value))
        if key:
            keys.append(key)
    return keys


def _tagged_key(message_id: str) -> str | None:
    """``key`` or ``key.tag`` from one of our Message-IDs (None: not ours)."""
    found = TAGGED_KEY_IN_MESSAGE_ID.search(message_id.strip())
    return found.group(1) if found else None


def outcome_of(recipient: RecipientStatus, policy_rejection: str = BLOCKED) -> str | None:
    """What one recipient's report means (None: no outcome yet)."""
    if recipient.action in ("delivered", "relayed", "expanded"):
        return DELIVERED
    if recipient.action != "failed":
        return None  # delayed: the relay keeps trying
    if recipient.status.startswith("4."):
        return BLOCKED
    if recipient.status.startswith("5.7."):
        return policy_rejection
    return BOUNCED  # 5.x.x, or a failure without a readable status: the relay gave up for good


def events_of(
    report: DeliveryReport, policy_rejection: str = BLOCKED, key_of_tags: bytes | None = None, from_email: str = ""
) -> list[OutcomeEvent]:
    """Outcome events for the report's attempts: our messages have one recipient each, so the strongest
    outcome among its recipients is the message's.

    Anybody can mail the bounce mailbox, and anybody can compute an attempt's key from an address: with
    ``key_of_tags`` (the transport tags its Message-IDs) a report is believed only for the attempts whose
    tag it quotes. A report quoting a bare key (a message sent before tags) names the attempt by its
    untagged Message-ID instead, which only an attempt sent without a tag has: never a tagged one."""
    outcomes = [(outcome_of(r, policy_rejection), r) for r in report.recipients]
    outcomes = [(o, r) for o, r in outcomes if o is not None]
    if not outcomes:
        return []
    rank = {BLOCKED: 1, DELIVERED: 2, BOUNCED: 3}
    outcome, recipient = max(outcomes, key=lambda pair: rank[pair[0]])
    detail = f"dsn: {recipient.action} {recipient.status} {recipient.diagnostic}".strip()[:500]
    events = []
    for quoted in report.keys:
        key, tag = split_tagged_key(quoted)
        if key_of_tags is None:
            events.append(OutcomeEvent(outcome, idempotency_key=key, source="dsn", detail=detail))
        elif tag is None:
            untagged = message_id(key, from_email)  # the id a send before tags recorded
            events.append(OutcomeEvent(outcome, untagged, source="dsn", detail=detail))
        elif hmac.compare_digest(tag, message_tag(key_of_tags, key)):
            events.append(OutcomeEvent(outcome, idempotency_key=key, source="dsn", detail=detail))
        else:
            log.warning("a bounce report for %s carries a wrong tag: not believed (a forged report?)", key)
    return events


@dataclass(frozen=True)
class MailboxSettings:
    host: str
    port: int | None = None
    login: str = ""
    password: str = ""
    use_ssl: bool = True
    starttls: bool = False
    verify_certificate: bool = True
    folder: str = "INBOX"
    processed_folder: str = "welcome-mailer-processed"
    unmatched_folder: str = "welcome-mailer-unmatched"
    timeout: float = 30.0


@dataclass
class DsnSource:
    """The OutcomeSource of the SMTP transport: bounce reports from the mailbox (when one is configured),
    then the settle time for accepted messages without a report."""

    mailbox: MailboxSettings | None
    settle: timedelta = timedelta(minutes=30)
    policy_rejection: str = BLOCKED
    key_of_tags: bytes | None = field(default=None, repr=False)  # the transport's (SmtpSettings.key_of_tags)
    from_email: str = ""  # the transport's: where an untagged Message-ID pointed
    name: str = "dsn"
    unmatched: int = 0  # reports kept aside by this source's polls
    _to_file: list[tuple[bytes, str]] = field(default_factory=list)

    def poll(self, pending: Iterable[PendingMessage]) -> Iterator[OutcomeEvent]:
        """The mailbox's reports, then a delivery for each pending message past the settle time without one
        (yielded as ``pending`` streams in)."""
        try:
            events = self.read_mailbox() if self.mailbox is not None else []
        except (imaplib.IMAP4.error, OSError) as exc:
            # Unreadable now: no settle either (a report may be waiting there); the next poke tries again,
            # and the sensor's timeout bounds the wait.
            log.warning("bounce mailbox %s:%s unreadable, retried at the next poll: %r", self.mailbox.host,
                        self.mailbox.port, exc)  # fmt: skip
            self._to_file.clear()
            return
        yield from events
        reported = {e.idempotency_key for e in events}
        settled_before = utcnow() - self.settle
        yield from (
            OutcomeEvent(DELIVERED, m.message_id, m.idempotency_key, "settle", "no bounce report", polled=m)
            for m in pending
            if m.sent_at is not None and m.sent_at <= settled_before and m.idempotency_key not in reported
        )

    def read_mailbox(self) -> list[OutcomeEvent]:
        """Every report in the folder, as events; the reports are filed by ``acknowledge``."""
        events = []
        with self._imap() as imap:
            imap.select(_quote(self.mailbox.folder))
            _, found = imap.uid("SEARCH", None, "ALL")
            uids = found[0].split() if found and found[0] else []
            for start in range(0, len(uids), FETCH_CHUNK):
                chunk = uids[start : start + FETCH_CHUNK]
                _, data = imap.uid("FETCH", b",".join(chunk), "(UID BODY.PEEK[])")
                for uid, raw in _fetched(data):
                    try:
                        report = parse_report(raw)
                        found_events = (
                            events_of(report, self.policy_rejection, self.key_of_tags, self.from_email)
                            if report.keys
                            else []
                        )
                    except Exception as exc:  # a report that does not parse is kept aside, never fatal
                        log.warning("bounce report %s does not parse (kept aside): %s", uid, exc)
                        found_events = []
                    if not found_events and not _delayed_only(raw):
                        self._to_file.append((uid, self.mailbox.unmatched_folder))
                        self.unmatched += 1
                        continue
                    events += found_events
                    self._to_file.append((uid, self.mailbox.processed_folder))
        return events

    def acknowledge(self) -> None:
        """The ledger recorded what the last poll returned: file its reports so that they are read once."""
        if self.mailbox is None or not self._to_file:
            return
        with self._imap() as imap:
            imap.select(_quote(self.mailbox.folder))
            for folder in {f for _, f in self._to_file}:
                imap.create(_quote(folder))  # an error when it exists: fine
                uids = b",".join(uid for uid, f in self._to_file if f == folder)
                status, _ = imap.uid("MOVE", uids, _quote(folder))
                if status != "OK":  # a server without MOVE (RFC 6851)
                    imap.uid("COPY", uids, _quote(folder))
                    imap.uid("STORE", uids, "+FLAGS.SILENT", r"(\Deleted)")
                    imap.expunge()
        self._to_file.clear()

    @contextlib.contextmanager
    def _imap(self) -> Iterator[imaplib.IMAP4]:
        m = self.mailbox
        if m.use_ssl:
            imap = imaplib.IMAP4_SSL(
                m.host, m.port or 993, ssl_context=tls_context(m.verify_certificate), timeout=m.timeout
            )
        else:
            imap = imaplib.IMAP4(m.host, m.port or 143, timeout=m.timeout)
            if m.starttls:
                imap.starttls(ssl_context=tls_context(m.verify_certificate))
        try:
            imap.login(m.login, m.password)
            yield imap
        finally:
            with contextlib.suppress(imaplib.IMAP4.error, OSError):
                imap.logout()


def _delayed_only(raw: bytes) -> bool:
    """A "delayed" report (the relay still tries) is read and filed as processed, not as unmatched."""
    try:
        report = parse_report(raw)
    except Exception:
        return False
    return bool(report.keys) and all(r.action == "delayed" for r in report.recipients)


def _fetched(data: list) -> Iterator[tuple[bytes, bytes]]:
    for item in data:
        if isinstance(item, tuple) and len(item) == 2:
            found = re.search(rb"UID (\d+)", item[0])
            if found:
                yield found.group(1), item[1]


def _quote(folder: str) -> str:
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'
