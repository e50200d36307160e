"""The mock relay: what it answers, what it logs, which bounce reports it writes.

Outcomes, drawn per transaction from (seed, recipient, how many transactions that recipient had before),
so that they do not depend on the order in which parallel connections arrive:

| draw | outcome | how the client learns it |
|---|---|---|
| 80% | delivered | 250 after the data; a report (Action: delivered, Status: 2.0.0) if asked for (*) |
| 5% | bounced | ``550 5.1.1`` to RCPT |
| 5% | bounced | 250, then a report (Action: failed, Status: 5.1.1) after 1-5 s |
| 3.3% | blocked | ``450 4.7.1`` to RCPT |
| 3.3% | blocked | ``550 5.7.1`` after the data (a reputation block) |
| 3.3% | blocked | 250, then a report (Action: failed, Status: 4.4.7) after 1-5 s |

(*) With NOTIFY=SUCCESS (RFC 3461; the relay offers DSN unless ``dsn`` is off): half of the success
reports at once, half after 1-5 s. Without it no report comes for a delivery: the client's settle time.

Faults (off by default): ``connect_421_rate`` (421 instead of the greeting), ``drop_after_data_rate``
(the message is received and kept, then the connection is cut without a reply), ``slow_data_reply_rate``
(the message is received and kept, and the reply comes ``slow_reply_seconds`` later: past the client's
timeout, a lost reply on a live connection), ``latency_ms`` before
every reply to RCPT and after the data.

The log (JSON lines, one per transaction that reached RCPT) is what tests prove invariants from: every
message the relay received, its outcome and when that outcome is known (``resolve_at``), the raw bytes.
"""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import hashlib
import json
import logging
import os
import random
import re
import socket
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from email._header_value_parser import get_addr_spec, get_angle_addr  # the parser aiosmtpd uses
from email.errors import HeaderParseError
from email.utils import formatdate, make_msgid
from pathlib import Path

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

MESSAGE_ID = re.compile(rb"^Message-ID:\s*(<[^>\r\n]*>)", re.IGNORECASE | re.MULTILINE)
KEY = re.compile(r"<(welcome-[0-9a-f]{40}-\d+)(?:\.[0-9a-f]{16})?@")  # the key, without its tag
log = logging.getLogger(__name__)
FROM_ADDRESS = re.compile(
    rb"^From:(?:[^\r\n]*<([^<>\s]+@[^<>\s]+)>|[ \t]*([^<>\s\"]+@[^<>\s]+))[ \t]*\r?$", re.I | re.M
)


@dataclass(frozen=True)
class RelaySettings:
    seed: int = 42
    delivered_rate: float = 0.8
    bounced_rate: float = 0.1
    blocked_rate: float = 0.1
    in_dialogue_rate: float = 0.5  # of the bounces, answered at RCPT; blocks split in thirds (see above)
    report_min_seconds: float = 1.0
    report_max_seconds: float = 5.0
    connect_421_rate: float = 0.0
    drop_after_data_rate: float = 0.0
    latency_ms: float = 0.0
    slow_data_reply_rate: float = 0.0
    slow_reply_seconds: float = 5.0
    pipelining: bool = True  # offer PIPELINING (RFC 2920), as real relays do
    dsn: bool = True  # offer DSN (RFC 3461), as Postfix does: success reports for NOTIFY=SUCCESS
    delivered_held_rate: float = 0.5  # of the success reports, written after 1-5 s; the rest at once
    login: str = ""  # AUTH required when set
    password: str = ""


@dataclass(frozen=True)
class Decision:
    outcome: str  # delivered | bounced | blocked
    stage: str  # rcpt | data | report | none: where the client learns a failure
    reply: str


def decide(settings: RelaySettings, recipient: str, earlier: int) -> Decision:
    """The outcome of a recipient's ``earlier``-th transaction (0 for the first)."""
    digest = hashlib.sha256(f"{settings.seed}:{recipient}:{earlier}".encode()).digest()
    draw = random.Random(digest)
    first, second = draw.random(), draw.random()
    if first < settings.delivered_rate:
        return Decision("delivered", "none", "250 2.0.0 Ok: queued")
    if first < settings.delivered_rate + settings.bounced_rate:
        if second < settings.in_dialogue_rate:
            return Decision("bounced", "rcpt", "550 5.1.1 <{}>: Recipient address rejected: User unknown")
        return Decision("bounced", "report", "250 2.0.0 Ok: queued")
    if second < 1 / 3:
        return Decision("blocked", "rcpt", "450 4.7.1 <{}>: Recipient address rejected: try again later")
    if second < 2 / 3:
        return Decision("blocked", "data", "550 5.7.1 Message rejected due to low sender reputation")
    return Decision("blocked", "report", "250 2.0.0 Ok: queued")


class Maildir:
    """The bounce mailbox the relay writes reports into (Dovecot serves it over IMAP)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for sub in ("tmp", "new", "cur"):
            (root / sub).mkdir(parents=True, exist_ok=True)

    def deliver(self, raw: bytes) -> Path:
        name = f"{time.time():.6f}.{os.getpid()}_{random.getrandbits(48):012x}.{socket.gethostname()}"
        tmp = self.root / "tmp" / name
        tmp.write_bytes(raw)
        final = self.root / "new" / name
        os.rename(tmp, final)  # atomic: a reader never sees half a report
        return final


def delivery_report(
    original: bytes,
    recipient: str,
    status: str,
    diagnostic: str,
    reporting_mta: str,
    action: str = "failed",
    envid: str = "",
    orcpt: str = "",
) -> bytes:
    """An RFC 3464 report in Postfix's shape: notification, delivery-status, the returned headers. A success
    report (``action`` delivered) reads as Postfix's "Successful Mail Delivery Report"."""
    headers = original.split(b"\r\n\r\n", 1)[0]
    # The From address: the one in <...> (ours always has it), else the email package's reading (slower:
    # a third of the relay's time per message when every delivery is reported).
    found = FROM_ADDRESS.search(headers)
    if found:
        to = (found.group(1) or found.group(2)).decode("ascii", "replace")
    else:
        sender = email.message_from_bytes(original, policy=email.policy.SMTP)["From"]
        to = sender.addresses[0].addr_spec if sender and sender.addresses else "postmaster"
    boundary = f"{random.getrandbits(64):016X}.{int(time.time())}/{reporting_mta}"
    now = formatdate(usegmt=True)
    delivered = action in ("delivered", "relayed", "expanded")
    subject = "Successful Mail Delivery Report" if delivered else "Undelivered Mail Returned to Sender"
    notice = (
        "Your message was successfully delivered to the destination(s)\r\nlisted below."
        if delivered
        else "I'm sorry to have to inform you that your message could not\r\n"
        "be delivered to one or more recipients. It's attached below."
    )
    text = (
        f"From: MAILER-DAEMON@{reporting_mta} (Mail Delivery System)\r\n"
        f"To: {to}\r\n"
        f"Subject: {subject}\r\n"
        f"Date: {now}\r\n"
        f"Message-ID: {make_msgid(domain=reporting_mta)}\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary="{boundary}"\r\n'
        "\r\n"
        "This is a MIME-encapsulated message.\r\n\r\n"
        f"--{boundary}\r\n"
        "Content-Description: Notification\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
        f"This is the mail system at host {reporting_mta}.\r\n\r\n"
        f"{notice}\r\n\r\n"
        f"<{recipient}>: {'delivery via' if delivered else 'host'} mx.{recipient.rpartition('@')[2]}"
        f"{':' if delivered else ' said:'} {diagnostic}\r\n\r\n"
        f"--{boundary}\r\n"
        "Content-Description: Delivery report\r\n"
        "Content-Type: message/delivery-status\r\n\r\n"
        f"Reporting-MTA: dns; {reporting_mta}\r\n"
        f"{f'Original-Envelope-Id: {envid}' + chr(13) + chr(10) if envid else ''}"
        f"X-Postfix-Queue-ID: {random.getrandbits(40):010X}\r\n"
        f"Arrival-Date: {now}\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\n"
        f"Original-Recipient: rfc822;{orcpt or recipient}\r\n"
        f"Action: {action}\r\n"
        f"Status: {status}\r\n"
        f"Remote-MTA: dns; mx.{recipient.rpartition('@')[2]}\r\n"
        f"Diagnostic-Code: smtp; {diagnostic}\r\n\r\n"
        f"--{boundary}\r\n"
        f"Content-Description: {'Message Headers' if delivered else 'Undelivered Message Headers'}\r\n"
        "Content-Type: text/rfc822-headers\r\n\r\n"
    )
    return text.encode() + headers + f"\r\n\r\n--{boundary}--\r\n".encode()


class Relay:
    """The aiosmtpd handler: decisions, the log and the reports."""

    def __init__(self, settings: RelaySettings, log_path: Path, maildir: Maildir | None, hostname: str) -> None:
        self.settings = settings
        self.maildir = maildir
        self.hostname = hostname
        self._log = log_path.open("a", encoding="utf-8")
        self._seq = 0
        self._per_recipient: dict[str, int] = {}
        self._faults = random.Random(settings.seed + 1)
        # Reports are written by a thread of their own, as a real relay's bounce daemon works apart from its
        # SMTP server: creating a file costs 0.15 ms on tmpfs but 2-3 ms on a busy disk, and the dialogue
        # must not wait for it.
        self._report_writer = ThreadPoolExecutor(1, thread_name_prefix="reports")
        self._closed = False

    def close(self) -> None:
        """Write the reports already due; those held for later are dropped, as when the relay stops."""
        self._closed = True
        self._report_writer.shutdown(wait=True)

    def _file_report(self, report: bytes) -> None:
        if not self._closed:
            self._report_writer.submit(self.maildir.deliver, report).add_done_callback(_log_failure)

    # -- connection-level faults ---------------------------------------------------------------------
    def refuse_connection(self) -> bool:
        return self._faults.random() < self.settings.connect_421_rate

    def authenticate(self, _server, _session, _envelope, mechanism, auth_data) -> AuthResult:
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == self.settings.login
            and auth_data.password.decode() == self.settings.password
        )
        return AuthResult(success=ok, handled=False)

    async def _latency(self) -> None:
        if self.settings.latency_ms:
            await asyncio.sleep(self.settings.latency_ms / 1000)

    # -- the dialogue ----------------------------------------------------------------------------------
    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if self.settings.pipelining:
            responses.insert(-1, "250-PIPELINING")
        if self.settings.dsn:
            responses.insert(-1, "250-DSN")
        return responses

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        await self._latency()
        if envelope.rcpt_tos:
            return "452 4.5.3 one recipient per transaction, please"
        recipient = address.lower()
        decision = decide(self.settings, recipient, self._per_recipient.get(recipient, 0))
        if decision.stage == "rcpt":
            self._record(
                envelope.mail_from, recipient, decision, decision.reply.format(address), b"", False, None, envelope
            )
            return decision.reply.format(address)
        envelope.rcpt_tos.append(address)
        envelope.decision = decision
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session, envelope):
        await self._latency()
        raw = envelope.original_content or b""
        recipient = envelope.rcpt_tos[0].lower()
        decision: Decision = envelope.decision
        dropped = self._faults.random() < self.settings.drop_after_data_rate
        slow = bool(self.settings.slow_data_reply_rate) and self._faults.random() < self.settings.slow_data_reply_rate
        reply = decision.reply
        delay = self._report_delay(envelope, decision, raw)
        self._record(envelope.mail_from, recipient, decision, reply, raw, dropped, delay, envelope, slow)
        if decision.stage == "none" and delay is not None and self.maildir is not None:
            report = delivery_report(
                raw, recipient, "2.0.0", "250 2.0.0 Ok: delivered", self.hostname, "delivered",
                getattr(envelope, "dsn_envid", ""), getattr(envelope, "dsn_orcpt", ""),
            )  # fmt: skip
            asyncio.get_running_loop().call_later(delay, self._file_report, report)
        if decision.stage == "report" and delay is not None and self.maildir is not None:
            status, diagnostic = (
                ("5.1.1", "550 5.1.1 User unknown")
                if decision.outcome == "bounced"
                else ("4.4.7", "delivery temporarily suspended: mailbox full, message expired")
            )
            report = delivery_report(
                raw, recipient, status, diagnostic, self.hostname, "failed",
                getattr(envelope, "dsn_envid", ""), getattr(envelope, "dsn_orcpt", ""),
            )  # fmt: skip
            asyncio.get_running_loop().call_later(delay, self._file_report, report)
        if dropped:  # the message was received: cut the line before the reply
            server.transport.abort()
        if slow:  # the message was received: the reply takes its time
            await asyncio.sleep(self.settings.slow_reply_seconds)
        return reply

    def _report_delay(self, envelope, decision: Decision, raw: bytes) -> float | None:
        """Seconds from acceptance to the report (None: no report). Failures are always reported; a delivery
        only when the client asked (NOTIFY=SUCCESS), half of them at once."""
        draw = random.Random(raw)
        notify = getattr(envelope, "dsn_notify", ())
        if decision.stage == "report" and notify and "FAILURE" not in notify:
            return None  # NOTIFY=NEVER (or SUCCESS/DELAY alone): no failure report, RFC 3461 section 4.1
        if decision.stage == "report":
            return draw.uniform(self.settings.report_min_seconds, self.settings.report_max_seconds)
        if decision.stage != "none" or "SUCCESS" not in notify:
            return None
        held, hold = draw.random(), draw.uniform(self.settings.report_min_seconds, self.settings.report_max_seconds)
        return hold if held < self.settings.delivered_held_rate else 0.0

    def _record(
        self, mail_from, recipient: str, decision: Decision, reply: str, raw: bytes, dropped: bool,
        delay: float | None = None, envelope=None, slow: bool = False,
    ) -> None:  # fmt: skip
        now = time.time()
        found = MESSAGE_ID.search(raw)
        message_id = found.group(1).decode("ascii", "replace") if found else None
        key = KEY.search(message_id or "")
        reported = delay is not None
        delay = delay or 0.0
        entry = {
            "seq": self._seq,
            "to": recipient,
            "mail_from": mail_from,
            "message_id": message_id,
            "idempotency_key": key.group(1) if key else None,
            "outcome": decision.outcome,
            "stage": decision.stage,
            "reply": reply,
            "dropped": dropped,
            "slow_reply": slow,
            "received": bool(raw),  # the data went through (RCPT refusals: nothing was sent)
            "created_at": now,
            "resolve_at": now + delay,
            "dsn": {  # what the client asked for (RFC 3461), as received
                "ret": getattr(envelope, "dsn_ret", ""),
                "envid": getattr(envelope, "dsn_envid", ""),
                "notify": ",".join(getattr(envelope, "dsn_notify", ())),
                "orcpt": getattr(envelope, "dsn_orcpt", ""),
            },
            "reported": reported,  # a report (failure, or success asked for with NOTIFY=SUCCESS) was written
            "raw": base64.b64encode(raw).decode(),
        }
        self._seq += 1
        self._per_recipient[recipient] = self._per_recipient.get(recipient, 0) + 1
        self._log.write(json.dumps(entry) + "\n")
        self._log.flush()


def _log_failure(written: Future) -> None:
    if written.exception() is not None:
        log.error("a report could not be written into the Maildir", exc_info=written.exception())


class RelaySMTP(SMTP):
    """aiosmtpd's server, with a 421 at connect when the relay says so."""

    def __init__(self, relay: Relay, **kwargs) -> None:
        super().__init__(relay, **kwargs)
        self.relay = relay
        self._held_replies: list[bytes] = []

    async def push(self, status: str | bytes) -> None:
        """Replies to pipelined commands go out together, as Postfix sends them: RFC 2920 lets a server defer
        its replies while it goes on receiving commands, and requires it to send them all before it waits for
        input. So a reply is held while the next command is already read (MAIL, RCPT and DATA then cost one
        write instead of three); a 3xx reply (354 to DATA) always goes at once: the client waits for it."""
        if isinstance(status, str):
            status = status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii")
        self._held_replies.append(status)
        if not status.startswith(b"3") and not self.transport.is_closing() and b"\n" in self._reader._buffer:
            return  # the next pipelined command is here (a closing line answers nothing more: flush, and stop)
        replies, self._held_replies = self._held_replies, []
        await super().push(b"\r\n".join(replies))

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's own parsing of a MAIL or RCPT address (the email package's RFC 5322 parser), without
        the typing.Protocol class aiosmtpd 1.4 builds at every call (a third of the relay's time)."""
        if not arg:
            return "", ""
        try:
            address, rest = get_angle_addr(arg) if arg.lstrip().startswith("<") else get_addr_spec(arg)
        except HeaderParseError:
            return None, None
        if self.local_part_limit and len(address.addr_spec.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return address.addr_spec, rest

    async def _handle_client(self) -> None:
        if self.relay.refuse_connection():
            await self.push("421 4.3.2 Service not available, closing transmission channel")
            self.transport.close()
            return
        await super()._handle_client()

    # RFC 3461 parameters, taken off before aiosmtpd (which knows none of them and upper-cases the rest).
    async def smtp_MAIL(self, arg: str | None) -> None:
        arg, found = _dsn_params(arg, ("RET", "ENVID"))
        await super().smtp_MAIL(arg)
        if self.envelope is not None and self.envelope.mail_from:
            self.envelope.dsn_envid = _xtext_decode(found.get("ENVID", ""))
            self.envelope.dsn_ret = found.get("RET", "").upper()

    async def smtp_RCPT(self, arg: str | None) -> None:
        arg, found = _dsn_params(arg, ("NOTIFY", "ORCPT"))
        if self.envelope is not None:
            self.envelope.dsn_notify = tuple(found.get("NOTIFY", "").upper().split(",")) if found else ()
            self.envelope.dsn_orcpt = _xtext_decode(found.get("ORCPT", "").partition(";")[2])
        await super().smtp_RCPT(arg)


def _dsn_params(arg: str | None, names: tuple[str, ...]) -> tuple[str | None, dict[str, str]]:
    """The command's argument without the named ESMTP parameters, and their values (case kept)."""
    if arg is None:
        return arg, {}
    kept, found = [], {}
    for n, word in enumerate(arg.split(" ")):
        name, _, value = word.partition("=")
        if n and name.upper() in names:
            found[name.upper()] = value
        else:
            kept.append(word)
    return " ".join(kept), found


def _xtext_decode(value: str) -> str:
    return re.sub(r"\+([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), value)


def read_log(path: Path) -> list[dict]:
    """The relay's log with each entry's status now: its outcome, or ``sent`` while a report is pending."""
    now = time.time()
    entries = []
    if not path.exists():
        return entries
    for line in path.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        entry["status"] = entry["outcome"] if now >= entry["resolve_at"] else "sent"
        entry["raw"] = base64.b64decode(entry["raw"])
        entries.append(entry)
    return entries
