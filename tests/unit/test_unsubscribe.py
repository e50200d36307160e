"""One-click unsubscribe links: signed per contact, and the RFC 8058 headers built from settings."""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import parse_qs, urlencode, urlsplit

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


def test_links_need_no_query_encoding_and_keep_the_urls_own_query():
    """Tokens are made of base64url characters and ".", which a query carries unencoded (the link is
    built without urlencode); a URL that has a query already gets the token as one more parameter."""
    for email in ("ann@example.com", "o'brien+tag@exämple.com", "x" * 300 + "@example.com"):
        link = list_unsubscribe_headers(email, SETTINGS)["List-Unsubscribe"][1:-1]
        token = link.split("?token=", 1)[1]
        assert urlencode({"token": token}) == f"token={token}"
        assert read_token(parse_qs(urlsplit(link).query)["token"][0], "secret-1") == email
    with_query = UnsubscribeSettings("https://mail.example.com/u?list=welcome", "secret-1")
    link = list_unsubscribe_headers("ann@example.com", with_query)["List-Unsubscribe"][1:-1]
    query = parse_qs(urlsplit(link).query)
    assert query["list"] == ["welcome"] and read_token(query["token"][0], "secret-1") == "ann@example.com"


def test_signatures_are_hmac_sha256_of_the_address_under_each_secret():
    """The keyed HMAC is reused across tokens (copied per token): each secret still signs on its own."""
    for secret in ("secret-1", "secret-2", "secret-1"):
        expected = hmac.new(secret.encode(), b"ann@example.com", hashlib.sha256).digest()
        signature = make_token("ann@example.com", secret).split(".")[1]
        assert signature == base64.urlsafe_b64encode(expected).decode().rstrip("=")[:22]
