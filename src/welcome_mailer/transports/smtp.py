"""The SMTP transport: any relay (Amazon SES, SendGrid, Postmark, Mailgun, Microsoft 365, a Postfix).

One SMTP transaction per recipient (MAIL, RCPT, DATA), many transactions per connection, up to
``max_connections`` connections in parallel, kept open between batches. What each reply becomes
(``classify``, RFC 5321 reply codes and RFC 3463 enhanced status codes):

| reply | stage | result |
|---|---|---|
| 2xx | after the data | accepted: the final outcome comes later (a bounce report, or the settle time) |
| 421, 451, 454 saying rate or quota (*) | MAIL, RCPT, or after the data | throttled: nothing was sent |
| 4xx | RCPT, or after the data | blocked: a NEW email after the backoff |
| 5.7.x (policy, reputation) | RCPT, or after the data | ``policy_rejection``: blocked (default) or bounced |
| 550-554, 5.1.x, 5.2.x | RCPT, or after the data | bounced (final), the message refused |
| 421, other 5xx, dropped, timeout | before the data, or a definite reply after it | retry (below) |

Retry: the same message again on a new connection, ``retry_limit`` times with backoff, then blocked (the
relay could not be reached: nothing went out, so a NEW email after the backoff is safe). "Other 5xx" are
the session's trouble, not the address's: 500-504 (syntax), 530/535 (authentication).
| a dropped connection, a timeout | after the data, before the reply | unconfirmed: never resent automatically |

(*) The reply's text names a rate, a quota or throttling (SES: ``454 Throttling failure: Maximum sending
rate exceeded`` / ``Daily message quota exceeded``, after the data, the message dropped; ``4.7.0 ... rate``)
or its enhanced code is in Microsoft's 4.7.500-4.7.599 range ("server busy"). A throttled message is
the SAME attempt sent again later by the pipeline (``welcome_mailer.pipeline.send_batch``): never a new
email, never an attempt spent; the rest of that connection's share is handed back unsent with it.

SMTP has no idempotency key, so the transport is not idempotent: the pipeline marks attempts dispatched
before handing them over, and an attempt whose data went out without a reply is never sent again.

Pure code: no Airflow import. ``welcome_mailer.hooks.esp`` builds ``SmtpSettings`` from a connection.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import quopri
import re
import smtplib
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from email.header import Header
from email.utils import formataddr, formatdate

from welcome_mailer.transports import OutgoingMessage, SendResult
from welcome_mailer.transports.smtp_metadata import METADATA_HEADERS, metadata_headers
from welcome_mailer.unsubscribe import UnsubscribeSettings, list_unsubscribe_headers
from welcome_mailer.vocabulary import BLOCKED, BOUNCED, key_from_message_id, message_tag

log = logging.getLogger(__name__)

MAX_BATCH = 1000
MAX_DISPLAY_NAME = 200  # longer names are cut: a display name is a greeting, not a payload
MESSAGE_ID_DOMAIN_FALLBACK = "welcome-mailer.invalid"
MAX_MESSAGE_ID = 100  # the ledger's provider_message_id column
POLICY_REJECTION_CHOICES = (BLOCKED, BOUNCED)
XTEXT_AS_IS = re.compile(r"[!-*,-<>-~]*")  # printable ASCII but "+" and "=" (RFC 3461 xtext)
ENHANCED_STATUS = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")
THROTTLING_CODES = (421, 451, 454)
THROTTLING_TEXT = re.compile(r"throttl|\brate\b|\bquota\b|too many messages|sending limit", re.IGNORECASE)

MAILBOX_REFUSALS = (550, 551, 552, 553, 554)  # RFC 5321: the mailbox or the transaction is refused
ENVELOPE = ("MAIL", "RCPT", "DATA")  # one transaction's commands, pipelined as one group
ACCEPTED, RETRY, THROTTLED = "accepted", "retry", "throttled"  # classify's answers besides the outcomes
# RFC 3461 NOTIFY: successes and failures. DELAY is left out: "delayed" reports change no outcome (the
# relay keeps trying), and each would be one more mail to read.
DSN_NOTIFY = "SUCCESS,FAILURE"


@dataclass(frozen=True)
class SmtpSettings:
    """How to reach the relay, read the way Airflow's SMTP provider reads its connection (host, port, login,
    password; extras from_email, disable_ssl, disable_tls, timeout, retry_limit, ssl_context) plus ours."""

    host: str
    port: int | None = None
    login: str = ""
    password: str = ""
    from_email: str = ""
    from_name: str = ""
    use_ssl: bool = True  # implicit TLS (port 465); Airflow's default, off with disable_ssl
    starttls: bool = True  # STARTTLS on a plain connection; off with disable_tls
    verify_certificate: bool = True  # ssl_context "none" turns it off (a self-signed test relay)
    timeout: float = 30.0
    retry_limit: int = 5  # reconnects per message before the data went out
    max_connections: int = 8
    policy_rejection: str = BLOCKED  # what a 5.7.x reply becomes (docs/smtp.md)
    # One-click unsubscribe through the plugin app's endpoint (welcome_mailer.unsubscribe), when configured;
    # else ``list_unsubscribe``: URI templates, comma-separated, {email} and {key} filled in (a provider's own).
    unsubscribe: UnsubscribeSettings = field(default_factory=UnsubscribeSettings)
    list_unsubscribe: str = ""
    settle_seconds: float = 1800.0  # no bounce report this long after acceptance: delivered (outcomes.dsn)
    helo: str | None = None
    # The relay's provider (postmark, sendgrid, mailgun, ses): its metadata header carries the idempotency
    # key, so that its webhook events find the attempt (transports.smtp_metadata). "" for another relay.
    provider: str = ""
    # Tags every Message-ID and envelope id with a keyed tag of the attempt's key (vocabulary.tag_key, from
    # the erase key): bounce reports without it are not believed. None: no tag.
    key_of_tags: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.provider and self.provider not in METADATA_HEADERS:
            raise ValueError(f"provider must be one of {sorted(METADATA_HEADERS)} or empty, not {self.provider!r}")
        if self.policy_rejection not in POLICY_REJECTION_CHOICES:
            raise ValueError(
                f"policy_rejection must be one of {POLICY_REJECTION_CHOICES}, not {self.policy_rejection!r}"
            )
        if not self.from_email or "@" not in self.from_email:
            raise ValueError("the SMTP connection needs a from_email (extra) with a domain")
        if self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")


class SmtpConnectionTrouble(Exception):
    """The connection failed in a way that says nothing about the recipient (421, dropped, timeout)."""


def enhanced_status(text: str) -> str | None:
    """The RFC 3463 enhanced status code a reply text starts with ("5.1.1"), or None."""
    found = ENHANCED_STATUS.match(text)
    return ".".join(found.groups()) if found else None


def classify(code: int, text: str, policy_rejection: str = BLOCKED) -> str:
    """What a reply to RCPT or to the end of the data means for the message: accepted, blocked, bounced,
    or retry (421: the server is closing the connection, the recipient is not the matter), or throttled
    (the sender's rate or quota: nothing was sent, the same message goes again later)."""
    if 200 <= code < 300:
        return ACCEPTED
    if is_throttling(code, text):
        return THROTTLED
    if code == 421:
        return RETRY
    if 400 <= code < 500:
        return BLOCKED
    status = enhanced_status(text)
    if status is not None and status.startswith("5.7."):
        return policy_rejection
    if code in MAILBOX_REFUSALS or (status or "").startswith(("5.1.", "5.2.")):
        return BOUNCED
    # 500-504 (syntax), 530/535 (authentication) and the like: the session's trouble, not the address's.
    return RETRY


def is_throttling(code: int, text: str) -> bool:
    """A reply that says the sender goes too fast or sent too much (see the module's table)."""
    if code not in THROTTLING_CODES:
        return False
    status = enhanced_status(text)
    if status is not None and status.startswith("4.7.") and 500 <= int(status.rsplit(".", 1)[1]) <= 599:
        return True
    return THROTTLING_TEXT.search(text) is not None


def message_id(idempotency_key: str, from_email: str, key_of_tags: bytes | None = None) -> str:
    """The Message-ID of an attempt: its idempotency key at the sender's domain, so that every attempt has
    its own stable id and a bounce report that quotes it names the attempt. With ``key_of_tags`` the key is
    followed by its keyed tag (``<key>.<tag>@domain``): a bounce report is believed only with the tag
    (outcomes.dsn), which nobody can compute from an address."""
    local = f"{idempotency_key}.{message_tag(key_of_tags, idempotency_key)}" if key_of_tags else idempotency_key
    domain = from_email.rpartition("@")[2].strip().lower()
    candidate = f"<{local}@{domain}>"
    return candidate if len(candidate) <= MAX_MESSAGE_ID else f"<{local}@{MESSAGE_ID_DOMAIN_FALLBACK}>"


@functools.cache
def tls_context(verify_certificate: bool) -> ssl.SSLContext:
    """The client TLS context of SMTP and IMAP connections, made once per process: loading the trusted
    certificates costs 0.05-0.15 s each time. Without verification for a self-signed test server."""
    context = ssl.create_default_context()
    if not verify_certificate:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def xtext(value: str) -> str:
    """RFC 3461 section 4: xtext, "+" and "=" and anything outside printable ASCII as "+XX"."""
    if XTEXT_AS_IS.fullmatch(value):  # the usual address: nothing to encode
        return value
    return "".join(
        f"+{b:02X}" if b < 33 or b > 126 or b in (ord("+"), ord("=")) else chr(b) for b in value.encode("utf-8")
    )


def _safe_display_name(name: str) -> str:
    """A display name that can only ever be a display name: control characters (CR, LF, ...) become
    spaces; the ``email`` package quotes or encodes the rest (commas, quotes, <>, non-ASCII)."""
    cleaned = "".join(ch if ch.isprintable() else " " for ch in name)
    # A name that looks like an RFC 2047 encoded word ("=?utf-8?q?x=0D=0ABcc:...?=") is decoded by the
    # email package when it folds the header, CR LF included: a header injection. "= ?" is never decoded.
    cleaned = cleaned.replace("=?", "= ?")
    return " ".join(cleaned.split())[:MAX_DISPLAY_NAME]


def _header_text(value: str, header_name: str) -> str:
    """A header value as 7-bit text: ASCII as it is, anything else as RFC 2047 encoded words (folded)."""
    if value.isascii():
        return value
    return Header(value, "utf-8", maxlinelen=76, header_name=header_name).encode(linesep="\r\n")


def _address(name: str, addr_spec: str, header_name: str) -> str:
    """``Name <addr>``: an ASCII name quoted where RFC 5322 needs it (formataddr), another encoded."""
    name = _safe_display_name(name)
    if not name:
        return addr_spec
    if name.isascii():
        return formataddr((name, addr_spec))
    return f"{_header_text(name, header_name)} <{addr_spec}>"


def render_message(settings: SmtpSettings, message: OutgoingMessage) -> bytes:
    """The MIME message of one attempt (RFC 5322, RFC 2045-2047), as the bytes that go after DATA, with
    CRLF line ends: text/plain in UTF-8, quoted-printable (7-bit clean: any relay takes it); with an HTML
    body, multipart/alternative of that text and a text/html part encoded the same way.

    Rendered with the ``email`` package's encoders (``formataddr``, ``Header``, ``quopri``) rather than an
    ``EmailMessage``, whose header objects cost 1.5 ms a message: the send rate's main cost."""
    headers = [
        ("From", _address(settings.from_name, settings.from_email, "From")),
        ("To", _address(message.to_name, message.to, "To")),
        ("Subject", _header_text(_safe_display_name(message.subject), "Subject")),
        ("Date", formatdate(localtime=False, usegmt=True)),
        ("Message-ID", message_id(message.idempotency_key, settings.from_email, settings.key_of_tags)),
    ]
    if settings.unsubscribe.enabled:
        headers += list(list_unsubscribe_headers(message.to, settings.unsubscribe).items())
    elif settings.list_unsubscribe:
        uris = [
            uri.strip().format(email=urllib.parse.quote(message.to, safe=""), key=message.idempotency_key)
            for uri in settings.list_unsubscribe.split(",")
            if uri.strip()
        ]
        headers.append(("List-Unsubscribe", ", ".join(f"<{_safe_display_name(uri)}>" for uri in uris)))
        if any(uri.lower().startswith("https://") for uri in uris):  # RFC 8058: one-click needs an HTTPS URI
            headers.append(("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))
    headers += metadata_headers(settings.provider, message.idempotency_key)
    headers.append(("MIME-Version", "1.0"))
    head = "".join(f"{name}: {value}\r\n" for name, value in headers).encode("ascii")
    if message.html is None:
        return head + _part("plain", message.text)
    # RFC 2046 5.1.4: the text first, the HTML last (the preferred one). The boundary holds "=_", which
    # quoted-printable never writes (a "=" it writes is followed by two hex digits or a line end): no
    # part's content can contain it.
    boundary = f"=_welcome_{message.idempotency_key}"
    return (
        head
        + f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n\r\n'.encode("ascii")
        + f"--{boundary}\r\n".encode("ascii")
        + _part("plain", message.text)
        + f"--{boundary}\r\n".encode("ascii")
        + _part("html", message.html)
        + f"--{boundary}--\r\n".encode("ascii")
    )


def _part(subtype: str, content: str) -> bytes:
    """A text part's header lines and body: UTF-8, quoted-printable (7-bit clean: any relay takes it),
    CRLF line ends."""
    body = quopri.encodestring(content.replace("\r\n", "\n").encode("utf-8")).replace(b"\n", b"\r\n")
    head = f'Content-Type: text/{subtype}; charset="utf-8"\r\nContent-Transfer-Encoding: quoted-printable\r\n'
    return head.encode("ascii") + b"\r\n" + body + (b"" if body.endswith(b"\r\n") else b"\r\n")


class SmtpEmailProvider:
    kind = "smtp"
    idempotent = False  # SMTP has no idempotency key: a message whose reply was lost may have gone out
    max_batch = MAX_BATCH

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings
        self._idle: list[smtplib.SMTP] = []
        self._lock = threading.Lock()
        self._workers = ThreadPoolExecutor(settings.max_connections, thread_name_prefix="smtp")
        self._mail_from = f"MAIL FROM:{smtplib.quoteaddr(settings.from_email)}"
        self._helo = settings.helo or socket.getfqdn()  # smtplib would look it up for every connection

    def close(self) -> None:
        self._workers.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            _quit(conn)

    def __enter__(self) -> SmtpEmailProvider:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def check(self) -> None:
        """Connect, secure and log in as a send would (the connection page's "Test"); raises on failure."""
        _quit(self._connect())

    def send_batch(self, messages: Sequence[OutgoingMessage]) -> list[SendResult]:
        """Send each message in its own transaction, over up to ``max_connections`` connections at once."""
        if not 1 <= len(messages) <= MAX_BATCH:
            raise ValueError(f"a batch takes 1 to {MAX_BATCH} messages, got {len(messages)}")
        shares = [messages[n :: self.settings.max_connections] for n in range(self.settings.max_connections)]
        futures = [self._workers.submit(self._send_share, share) for share in shares if share]
        by_key = {}
        for future in futures:
            by_key.update(future.result())
        return [by_key[m.idempotency_key] for m in messages]

    # -- one connection's share ------------------------------------------------------------------------
    def _send_share(self, share: Sequence[OutgoingMessage]) -> dict[str, SendResult]:
        """The share's messages one after the other on one connection (an idle one when there is one).
        With PIPELINING each message's data goes out in one write with the next message's MAIL, RCPT and
        DATA (RFC 2920: the content of a message may open the next group), so a message costs one round
        trip instead of two."""
        results = {}
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        opened = False  # the next message's envelope went out with the last data
        throttled: SendResult | None = None  # the relay throttled this connection: the rest is not tried now
        try:
            for n, message in enumerate(share):
                if throttled is not None:
                    results[message.idempotency_key] = replace(throttled, to=message.to)
                    continue
                following = share[n + 1] if n + 1 < len(share) else None
                conn, results[message.idempotency_key], opened = self._send_one(conn, message, opened, following)
                if results[message.idempotency_key].throttled:
                    throttled = results[message.idempotency_key]
        finally:
            if conn is not None and opened:  # an exception left an envelope open: the connection is not reusable
                _quit(conn)
            elif conn is not None:
                with self._lock:
                    self._idle.append(conn)
        return results

    def _send_one(
        self, conn: smtplib.SMTP | None, message: OutgoingMessage, opened: bool, following: OutgoingMessage | None
    ) -> tuple[smtplib.SMTP | None, SendResult, bool]:
        """Returns the connection to go on with (None: it is gone), the message's result, and whether the
        following message's envelope went out with this message's data."""
        msg_id = self._message_id(message)
        data = render_message(self.settings, message)
        trouble = "no try"
        for tried in range(self.settings.retry_limit + 1):
            if tried:
                time.sleep(min(0.2 * 2 ** (tried - 1), 10.0))
            try:
                if conn is None:
                    conn, opened = self._connect(), False
                result, opened_next = self._transaction(conn, message.to, msg_id, data, opened, following)
            except SmtpConnectionTrouble as exc:  # nothing went out: the same message, on a new connection
                trouble = str(exc)
                log.warning("SMTP connection trouble before the data (try %s): %s", tried + 1, trouble)
                _quit(conn)
                conn = None
                continue
            if result.unconfirmed or result.throttled:  # throttled: a fresh connection when the pipeline retries
                _quit(conn)
                conn, opened_next = None, False
            return conn, result, opened_next
        # The relay could not be reached for this message: nothing went out. Temporary by nature, so the
        # contact is blocked (a NEW email after the backoff), never bounced.
        return conn, SendResult(message.to, msg_id, f"relay unreachable: {trouble}"[:500], outcome=BLOCKED), False

    def _message_id(self, message: OutgoingMessage) -> str:
        return message_id(message.idempotency_key, self.settings.from_email, self.settings.key_of_tags)

    def _connect(self) -> smtplib.SMTP:
        s = self.settings
        try:
            if s.use_ssl:
                conn = smtplib.SMTP_SSL(
                    s.host,
                    s.port or 465,
                    local_hostname=self._helo,
                    timeout=s.timeout,
                    context=tls_context(s.verify_certificate),
                )
            else:
                conn = smtplib.SMTP(s.host, s.port or 25, local_hostname=self._helo, timeout=s.timeout)
            conn.ehlo()
            if s.starttls and not s.use_ssl:
                conn.starttls(context=tls_context(s.verify_certificate))
                conn.ehlo()
            if s.login:
                conn.login(s.login, s.password)
        except smtplib.SMTPConnectError as exc:  # 421 (or another refusal) at connect
            raise SmtpConnectionTrouble(f"connect: {exc.smtp_code} {_text(exc.smtp_error)}") from exc
        except (smtplib.SMTPException, OSError) as exc:  # dropped, TLS or authentication refused
            raise SmtpConnectionTrouble(f"connect: {exc!r}") from exc
        return conn

    def _transaction(
        self, conn: smtplib.SMTP, to: str, msg_id: str, data: bytes, opened: bool, following: OutgoingMessage | None
    ) -> tuple[SendResult, bool]:
        """MAIL, RCPT, DATA for one recipient (``opened``: they went out with the last data, only their
        replies are read). Raises SmtpConnectionTrouble while nothing went out. Returns the result, and
        whether the ``following`` message's envelope went out with the data."""
        try:
            replies = [conn.getreply() for _ in ENVELOPE] if opened else self._envelope(conn, to, msg_id)
            code, text = replies[0]
            if is_throttling(code, _text(text)):
                _rset(conn)
                return SendResult(to, None, f"MAIL FROM: {code} {_text(text)}"[:500], throttled=True), False
            if code >= 400:  # the sender refused or deferred: the relay's state or configuration, not the recipient
                _rset(conn)
                raise SmtpConnectionTrouble(f"MAIL FROM: {code} {_text(text)}")
            code, text = replies[1]
            answer = self._answer(conn, to, msg_id, "RCPT", code, text)
            if answer is not None:
                return answer, False
            code, text = replies[2]
            if code != 354:
                answer = self._answer(conn, to, msg_id, "DATA", code, text)
                if answer is not None:
                    return answer, False
                raise SmtpConnectionTrouble(f"DATA: {code} {_text(text)}")
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            raise SmtpConnectionTrouble(repr(exc)) from exc
        # From here on the message may reach the relay: a lost reply is never retried. The following
        # message's envelope rides along; if no reply comes, it went out without its data: nothing was sent.
        next_group = b""
        if following is not None and conn.has_extn("pipelining"):
            commands = self._envelope_commands(conn, following.to, self._message_id(following))
            next_group = "".join(f"{command}\r\n" for command in commands).encode(conn.command_encoding)
        try:
            stuffed = re.sub(rb"(?m)^\.", b"..", data)  # RFC 5321 4.5.2: a leading dot is doubled
            conn.send(stuffed + (b"" if stuffed.endswith(b"\r\n") else b"\r\n") + b".\r\n" + next_group)
            code, text = conn.getreply()
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            return SendResult(to, msg_id, f"no reply after the data: {exc!r}"[:500], unconfirmed=True), False
        if code == 421 and not is_throttling(code, _text(text)):  # a definite "not accepted": safe to send again
            raise SmtpConnectionTrouble(f"after the data: {code} {_text(text)}")
        answer = self._answer(conn, to, msg_id, "end of data", code, text)
        return answer or SendResult(to, msg_id), bool(next_group)

    def _envelope_commands(self, conn: smtplib.SMTP, to: str, msg_id: str) -> list[str]:
        """MAIL, RCPT and DATA for one recipient. When the relay offers DSN (RFC 3461), MAIL carries RET=HDRS
        ENVID=<idempotency key> and RCPT NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;<address>: the relay then
        reports deliveries too, so an accepted message is delivered when its report is read rather than
        after the settle time."""
        mail, rcpt = self._mail_from, f"RCPT TO:{smtplib.quoteaddr(to)}"
        if conn.has_extn("dsn"):  # RFC 3461: ask for a report on success too, matched by ENVID or Message-ID
            key = msg_id[1:].partition("@")[0] if key_from_message_id(msg_id) else ""  # with its tag
            mail += f" RET=HDRS ENVID={xtext(key)}" if key else " RET=HDRS"
            rcpt += f" NOTIFY={DSN_NOTIFY} ORCPT=rfc822;{xtext(to)}"
        return [mail, rcpt, "DATA"]

    def _envelope(self, conn: smtplib.SMTP, to: str, msg_id: str = "") -> list[tuple[int, bytes]]:
        """The replies to MAIL, RCPT and DATA: in one round trip when the relay offers PIPELINING (RFC 2920;
        it then answers DATA with 503/554 by itself when RCPT was refused), else one by one, stopping at the
        first refusal (the replies not asked for are left out)."""
        commands = self._envelope_commands(conn, to, msg_id)
        if conn.has_extn("pipelining"):
            conn.send("".join(f"{command}\r\n" for command in commands))
            return [conn.getreply() for _ in commands]
        replies = []
        for command in commands:
            conn.putcmd(command)
            replies.append(conn.getreply())
            if replies[-1][0] >= 400:
                break
        return replies + [(0, b"not asked")] * (len(commands) - len(replies))

    def _answer(
        self, conn: smtplib.SMTP, to: str, msg_id: str, stage: str, code: int, text: bytes
    ) -> SendResult | None:
        """The result a refusal means (None: accepted, go on). 421 raises: the connection is closing."""
        reply = f"{stage}: {code} {_text(text)}"[:500]
        kind = classify(code, _text(text), self.settings.policy_rejection)
        if kind == ACCEPTED:
            return None
        if kind == RETRY:
            raise SmtpConnectionTrouble(reply)
        if stage != "end of data":
            _rset(conn)
        if kind == THROTTLED:  # nothing was sent (SES drops the message after the data): the same one later
            return SendResult(to, None, reply, throttled=True)
        if kind == BOUNCED:
            return SendResult(to, None, reply)
        return SendResult(to, msg_id, reply, outcome=BLOCKED)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _rset(conn: smtplib.SMTP) -> None:
    """End a refused transaction. A failure here is the next transaction's trouble (it reconnects): the
    refusal itself was a definite answer."""
    with contextlib.suppress(smtplib.SMTPException, OSError):
        conn.rset()


def _quit(conn: smtplib.SMTP | None) -> None:
    if conn is None:
        return
    try:
        conn.quit()
    except (TimeoutError, smtplib.SMTPException, OSError):
        conn.close()
