"""One-click unsubscribe links: signed per contact, and the RFC 8058 headers built from settings."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from welcome_mailer.unsubscribe import UnsubscribeSettings, list_unsubscribe_headers, make_token, read_token

SETTINGS = UnsubscribeSettings("https://mail.example.com/welcome-mailer/unsubscribe", "secret-1")


def test_a_token_names_its_contact_and_needs_the_secret():
    token = make_token("ann@example.com", "secret-1")
    assert read_token(token, "secret-1") == "ann@example.com"
    assert read_token(token, "secret-2") is None
    assert (
        read_token(make_token("bob@example.com", "secret-1").split(".")[0] + "." + token.split(".")[1], "secret-1")
        is None
    )
    assert read_token("", "secret-1") is None
    assert read_token("%%%.x", "secret-1") is None
    assert read_token(token, "") is None


def test_the_headers_follow_rfc_8058():
    headers = list_unsubscribe_headers("ann@example.com", SETTINGS)
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    url = headers["List-Unsubscribe"]
    assert url.startswith("<https://mail.example.com/welcome-mailer/unsubscribe?token=") and url.endswith(">")
    [token] = parse_qs(urlsplit(url[1:-1]).query)["token"]
    assert read_token(token, "secret-1") == "ann@example.com"


def test_no_headers_unless_the_endpoint_is_configured():
    assert list_unsubscribe_headers("ann@example.com", UnsubscribeSettings()) == {}
    assert list_unsubscribe_headers("ann@example.com", UnsubscribeSettings(url=SETTINGS.url)) == {}
    env = {"WELCOME_MAILER_UNSUBSCRIBE_URL": SETTINGS.url, "WELCOME_MAILER_UNSUBSCRIBE_SECRET": "secret-1"}
    assert UnsubscribeSettings.from_env(env) == SETTINGS
