"""A template's message through the SMTP renderer: multipart/alternative with HTML, and no value a
template or a contact holds ever adds a header (CR/LF, encoded-words), whichever part it is rendered in."""

from __future__ import annotations

import pytest

from tests.unit.test_smtp_message import HOSTILE_NAMES, KEY, SETTINGS, parse
from welcome_mailer.templates import RefusedMessage, TemplateSource, compile_template
from welcome_mailer.transports.smtp import render_message

TEMPLATE = TemplateSource("t", "Welcome, {{ name }}!", "Hi {{ name }} at {{ email }}", "<p>Hi {{ name }}</p>")
HEADERS = ["content-type", "date", "from", "message-id", "mime-version", "subject", "to"]


def smtp_raw(source: TemplateSource, name: str, to: str = "ann@example.com") -> bytes:
    return render_message(SETTINGS, compile_template(source).message(to, name, KEY))


def test_a_message_with_html_is_multipart_alternative_text_first():
    message = parse(smtp_raw(TEMPLATE, "Zoë <b>"))
    assert message.get_content_type() == "multipart/alternative"
    assert sorted(k.lower() for k in message) == HEADERS
    text, html = message.iter_parts()
    assert text.get_content_type() == "text/plain" and html.get_content_type() == "text/html"
    assert text["Content-Transfer-Encoding"] == html["Content-Transfer-Encoding"] == "quoted-printable"
    assert text.get_content().rstrip("\r\n") == "Hi Zoë <b> at ann@example.com"
    assert html.get_content().rstrip("\r\n") == "<p>Hi Zoë &lt;b&gt;</p>"
    assert str(message["Subject"]) == "Welcome, Zoë <b>!"


def test_the_builtin_message_is_todays_single_part_text():
    message = parse(
        smtp_raw(TemplateSource("welcome", "Welcome!", 'Hi {{ name | default("there") }}, Welcome!'), "Ann")
    )
    assert message.get_content_type() == "text/plain" and message.get_content().rstrip("\r\n") == "Hi Ann, Welcome!"


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_name_in_the_subject_and_bodies_never_adds_a_header(name):
    try:
        raw = smtp_raw(TEMPLATE, name)
    except RefusedMessage as exc:  # a line break or control character in the subject: never sent
        assert "subject" in str(exc) and not name.isprintable()
        return
    assert b"\n" not in raw.replace(b"\r\n", b"")  # CRLF line ends only
    message = parse(raw)
    assert sorted(k.lower() for k in message) == HEADERS
    assert [a.addr_spec for a in message["To"].addresses] == ["ann@example.com"]
    assert "\n" not in str(message["Subject"]) and "\r" not in str(message["Subject"])
    text, _ = message.iter_parts()
    assert name in text.get_content()  # the value is in the body, where it belongs


@pytest.mark.parametrize(
    "subject",
    [
        "=?utf-8?q?Hi=0D=0ABcc:_victim@example.com?=",
        "Hi =?utf-8?b?ZXZpbA0KQmNjOiB2aWN0aW1AZXhhbXBsZS5jb20=?=",
        "{{ name }}",
    ],
)
def test_an_encoded_word_in_a_subject_template_never_becomes_a_header(subject):
    source = TemplateSource("t", subject, "body")
    message = parse(smtp_raw(source, "=?utf-8?q?x=0D=0ABcc:_victim@example.com?="))
    assert sorted(k.lower() for k in message) == sorted([*HEADERS, "content-transfer-encoding"])
    assert message.get_all("Bcc") is None and "\n" not in str(message["Subject"])


@pytest.mark.parametrize("provider", ["postmark", "sendgrid", "mailgun", "ses"])
def test_a_message_with_html_carries_the_providers_metadata_header_once(provider):
    """The header that brings the idempotency key back in the provider's events, on the message itself
    (not inside a part), as on a text-only message."""
    from dataclasses import replace

    settings = replace(SETTINGS, provider=provider)
    html = parse(render_message(settings, compile_template(TEMPLATE).message("ann@example.com", "Ann", KEY)))
    text = parse(
        render_message(settings, compile_template(TemplateSource("t", "Hi", "Hi")).message("a@x.org", "", KEY))
    )
    extra = sorted(set(k.lower() for k in text) - {"content-transfer-encoding", *HEADERS})
    assert len(extra) == 1, extra
    assert html.get_all(extra[0]) == text.get_all(extra[0]) and KEY in str(html[extra[0]])
    assert all(part.get(extra[0]) is None for part in html.iter_parts())
