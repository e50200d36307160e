"""The SMTP transport's pure parts: the MIME message of an attempt, and what each reply means."""

from __future__ import annotations

import email
import email.policy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from welcome_mailer.transports import OutgoingMessage
from welcome_mailer.transports.smtp import (
    SmtpSettings,
    classify,
    key_from_message_id,
    message_id,
    render_message,
)

KEY = "welcome-0123456789abcdef0123456789abcdef01234567-2"
SETTINGS = SmtpSettings("relay.example", from_email="welcome@mailer.example", from_name="Welcome Team")
HOSTILE_NAMES = [
    "Ann\r\nBcc: victim@example.com",
    "Ann\nSubject: free money",
    "Smith, John",
    'Ann "The Boss" <boss@evil.example>',
    "<evil@example.com>",
    "x" * 5000,
    "Zoë Ærø 李小龍",
    "=?utf-8?q?evil=0D=0ABcc:_victim@example.com?=",  # an encoded word the email package would decode
    "=?utf-8?b?ZXZpbA0KQmNjOiB2aWN0aW1AZXhhbXBsZS5jb20=?=",
    "Ann =?iso-8859-1?q?=0D=0ATo:_x@evil.example?= Smith",
    "Ann\x00\x07\x1b",
]


def parse(raw: bytes):
    return email.message_from_bytes(raw, policy=email.policy.default)


def raw_of(name: str, to: str = "ann@example.com") -> bytes:
    return render_message(SETTINGS, OutgoingMessage(to, "Welcome!", f"Hi {name}, Welcome!", KEY, name))


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_name_never_adds_a_header_or_a_recipient(name):
    raw = raw_of(name)
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    assert b"\r\n" not in raw.replace(b"\r\n", b"") and b"\n" not in raw.replace(b"\r\n", b"")  # CRLF only
    message = parse(raw)
    headers = [k.lower() for k in message]
    assert sorted(headers) == sorted(
        ["from", "to", "subject", "date", "message-id", "content-type", "content-transfer-encoding", "mime-version"]
    )
    [to] = message["To"].addresses
    assert to.addr_spec == "ann@example.com"
    assert message["Subject"] == "Welcome!"
    body = message.get_content().replace("\r\n", "\n")  # the body carries the name, in its own lines
    assert body == f"Hi {name}, Welcome!\n".replace("\r\n", "\n")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300) | st.builds("=?utf-8?q?{}?=".format, st.text(max_size=50)))
def test_any_name_gives_exactly_one_recipient(name):
    message = parse(raw_of(name))
    assert [a.addr_spec for a in message["To"].addresses] == ["ann@example.com"]
    assert len(message.get_all("To")) == 1 and message.get_all("Bcc") is None and message.get_all("Cc") is None


def test_the_message_of_an_attempt():
    message = parse(raw_of("Zoë"))
    assert message["From"].addresses[0].display_name == "Welcome Team"
    assert message["From"].addresses[0].addr_spec == "welcome@mailer.example"
    assert message["To"].addresses[0].display_name == "Zoë"
    assert message["Message-ID"] == f"<{KEY}@mailer.example>"
    assert message.get_content_charset() == "utf-8"
    assert message["Date"].datetime is not None
    assert "List-Unsubscribe" not in message


def test_message_id_names_its_attempt():
    assert key_from_message_id(message_id(KEY, "a@mailer.example")) == KEY
    assert message_id(KEY, "a@mailer.example") != message_id(KEY.replace("-2", "-3"), "a@mailer.example")
    long_domain = "a@" + "sub." * 30 + "example.com"
    assert len(message_id(KEY, long_domain)) <= 100
    assert key_from_message_id("<20260601.abc@mailer.example>") is None


def test_list_unsubscribe_one_click_when_configured():
    configured = SmtpSettings(
        "relay.example",
        from_email="welcome@mailer.example",
        list_unsubscribe="https://mailer.example/unsubscribe?e={email}&k={key}, "
        "mailto:unsubscribe@mailer.example?subject={key}",
    )
    message = parse(render_message(configured, OutgoingMessage("a+b@example.com", "Welcome!", "Hi", KEY, "A")))
    assert message["List-Unsubscribe"] == (
        f"<https://mailer.example/unsubscribe?e=a%2Bb%40example.com&k={KEY}>, "
        f"<mailto:unsubscribe@mailer.example?subject={KEY}>"
    )
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    mailto_only = SmtpSettings("r", from_email="w@mailer.example", list_unsubscribe="mailto:u@mailer.example")
    message = parse(render_message(mailto_only, OutgoingMessage("a@example.com", "W", "Hi", KEY)))
    assert message["List-Unsubscribe"] == "<mailto:u@mailer.example>" and "List-Unsubscribe-Post" not in message


@pytest.mark.parametrize(
    ("code", "text", "policy", "meaning"),
    [
        (250, "2.0.0 Ok: queued as 4XYZ", "blocked", "accepted"),
        (550, "5.1.1 <a@example.com>: Recipient address rejected: User unknown", "blocked", "bounced"),
        (550, "No such user here", "blocked", "bounced"),
        (551, "User not local", "blocked", "bounced"),
        (553, "5.1.3 bad address syntax", "blocked", "bounced"),
        (554, "5.2.1 mailbox disabled", "blocked", "bounced"),
        (550, "5.7.1 Message rejected due to low sender reputation", "blocked", "blocked"),
        (550, "5.7.1 Message rejected due to low sender reputation", "bounced", "bounced"),
        (450, "4.7.1 try again later", "blocked", "blocked"),
        (452, "4.2.2 mailbox full", "blocked", "blocked"),
        (421, "4.3.2 Service not available", "blocked", "retry"),
        (500, "Error: command not recognized", "blocked", "retry"),
        (530, "5.7.0 Authentication required", "bounced", "bounced"),  # 5.7.x follows the policy
        (535, "Authentication failed", "blocked", "retry"),
    ],
)
def test_what_each_reply_means(code, text, policy, meaning):
    assert classify(code, text, policy) == meaning


def test_the_plugin_apps_one_click_link_when_its_endpoint_is_configured():
    from welcome_mailer.unsubscribe import UnsubscribeSettings, read_token

    endpoint = UnsubscribeSettings("https://airflow.example.com/welcome-mailer/unsubscribe", "secret")
    configured = SmtpSettings("r", from_email="w@mailer.example", unsubscribe=endpoint, list_unsubscribe="mailto:x@y")
    message = parse(render_message(configured, OutgoingMessage("ann@example.com", "Welcome!", "Hi", KEY, "Ann")))
    link = message["List-Unsubscribe"].strip("<>")
    assert link.startswith(endpoint.url + "?token=")
    assert read_token(link.split("token=", 1)[1].replace("%3D", "="), "secret") == "ann@example.com"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


class FakeConnection:
    """What the transport's envelope needs of smtplib.SMTP: the relay's EHLO keywords and a wire."""

    def __init__(self, *keywords: str) -> None:
        self.keywords = {k.lower() for k in keywords}
        self.sent: list[str] = []

    def has_extn(self, name: str) -> bool:
        return name.lower() in self.keywords

    def send(self, data: str) -> None:
        self.sent += data.splitlines()

    def putcmd(self, command: str) -> None:
        self.sent.append(command)

    def getreply(self) -> tuple[int, bytes]:
        return 250, b"ok"


@pytest.mark.parametrize("keywords", [("pipelining", "dsn"), ("dsn",)], ids=["pipelining", "one-by-one"])
def test_the_transport_asks_for_success_reports_when_the_relay_offers_dsn(keywords):
    from welcome_mailer.transports.smtp import SmtpEmailProvider

    conn = FakeConnection(*keywords)
    with SmtpEmailProvider(SETTINGS) as transport:
        transport._envelope(conn, "ann+x=1@example.com", message_id(KEY, SETTINGS.from_email))
    assert conn.sent == [
        f"MAIL FROM:<welcome@mailer.example> RET=HDRS ENVID={KEY}",  # RFC 3461: the report names the attempt
        "RCPT TO:<ann+x=1@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;ann+2Bx+3D1@example.com",  # xtext
        "DATA",
    ]


def test_the_transport_asks_for_nothing_more_when_the_relay_does_not_offer_dsn():
    from welcome_mailer.transports.smtp import SmtpEmailProvider

    conn = FakeConnection("pipelining")
    with SmtpEmailProvider(SETTINGS) as transport:
        transport._envelope(conn, "ann@example.com", message_id(KEY, SETTINGS.from_email))
    assert conn.sent == ["MAIL FROM:<welcome@mailer.example>", "RCPT TO:<ann@example.com>", "DATA"]
