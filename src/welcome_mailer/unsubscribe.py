"""One-click unsubscribe (RFC 8058, RFC 2369): signed per-contact tokens and the headers every message
carries. Pure code: transports (HTTP, SMTP) call ``list_unsubscribe_headers``; the plugin app's
endpoint (``welcome_mailer.web.unsubscribe``) reads the token back.

A token is ``<base64url(email)>.<base64url(HMAC-SHA256(secret, email))[:22]>``: it names the contact and
cannot be made without the secret. Rotating the secret invalidates the links of messages already sent.

| variable | meaning |
|---|---|
| WELCOME_MAILER_UNSUBSCRIBE_URL | the endpoint's public https URL; unset: no header |
| WELCOME_MAILER_UNSUBSCRIBE_SECRET | the key tokens are signed with (any long random string) |

The URL is the api-server's public address + ``/welcome-mailer/unsubscribe``, e.g.
``https://airflow.example.com/welcome-mailer/unsubscribe``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache

SIGNATURE_CHARS = 22  # 132 bits of the HMAC


@dataclass(frozen=True)
class UnsubscribeSettings:
    url: str = ""
    secret: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.url and self.secret)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> UnsubscribeSettings:
        env = os.environ if environ is None else environ
        return cls(env.get("WELCOME_MAILER_UNSUBSCRIBE_URL", ""), env.get("WELCOME_MAILER_UNSUBSCRIBE_SECRET", ""))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


@cache
def _keyed(secret: str) -> hmac.HMAC:
    """The HMAC keyed with ``secret``, copied for each token: keying it again for every message of a
    million-row run cost as much as the rest of the token."""
    return hmac.new(secret.encode(), digestmod=hashlib.sha256)


def _signature(secret: str, email: str) -> str:
    mac = _keyed(secret).copy()
    mac.update(email.encode())
    return _b64(mac.digest())[:SIGNATURE_CHARS]


def make_token(email: str, secret: str) -> str:
    return f"{_b64(email.encode())}.{_signature(secret, email)}"


def read_token(token: str, secret: str) -> str | None:
    """The contact's email, or None when the token was not made with this secret."""
    encoded, _, signature = (token or "").partition(".")
    try:
        email = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    except (binascii.Error, ValueError):
        return None
    return email if secret and hmac.compare_digest(signature, _signature(secret, email)) else None


def unsubscribe_url(email: str, settings: UnsubscribeSettings) -> str:
    # A token is base64url and ".", characters a query string carries as they are (RFC 3986): no encoding.
    separator = "&" if "?" in settings.url else "?"
    return f"{settings.url}{separator}token={make_token(email, settings.secret)}"


def list_unsubscribe_headers(email: str, settings: UnsubscribeSettings) -> dict[str, str]:
    """The List-Unsubscribe headers for a message to ``email`` (none when the endpoint is not configured).
    ``email`` is the ledger's normalised address, as the transports get it."""
    if not settings.enabled:
        return {}
    return {
        "List-Unsubscribe": f"<{unsubscribe_url(email, settings)}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
