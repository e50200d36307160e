"""Provider metadata on SMTP messages: the header each provider's SMTP service turns into the custom
metadata its webhook events carry back, so that an event for a message sent over SMTP finds its attempt
by the idempotency key (``METADATA_KEY``), as one sent over the provider's API does.

| provider | header, from their docs | back in the event as |
|---|---|---|
| ``postmark`` | ``X-PM-Metadata-<name>: <value>`` (Custom metadata FAQ) | ``Metadata.<name>`` |
| ``sendgrid`` | ``X-SMTPAPI: {"unique_args": {...}}`` (Unique Arguments) | a top-level field ``<name>`` |
| ``mailgun`` | ``X-Mailgun-Variables: {...}`` (a JSON object) | ``user-variables.<name>`` |
| ``ses`` | ``X-SES-MESSAGE-TAGS: <name>=<value>`` (SES-specific email headers) | ``mail.tags.<name>: [<value>]`` |

Postmark takes any header with the ``X-PM-Metadata-`` prefix as a metadata field; SendGrid's unique
args take string values only; SES tag names and values are ASCII letters, digits, ``_`` and ``-``
(the key, ``welcome-<hex>-<n>``, is).
A header is set only when the SMTP connection names its provider (extra ``provider``): another relay
would pass it on to the recipient for nothing. The providers strip their own headers before delivery.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from welcome_mailer.vocabulary import METADATA_KEY


def _postmark(key: str) -> tuple[str, str]:
    return f"X-PM-Metadata-{METADATA_KEY}", key


def _sendgrid(key: str) -> tuple[str, str]:
    return "X-SMTPAPI", json.dumps({"unique_args": {METADATA_KEY: key}})


def _mailgun(key: str) -> tuple[str, str]:
    return "X-Mailgun-Variables", json.dumps({METADATA_KEY: key})


def _ses(key: str) -> tuple[str, str]:
    return "X-SES-MESSAGE-TAGS", f"{METADATA_KEY}={key}"


METADATA_HEADERS: dict[str, Callable[[str], tuple[str, str]]] = {
    "postmark": _postmark,
    "sendgrid": _sendgrid,
    "mailgun": _mailgun,
    "ses": _ses,
}


def metadata_headers(provider: str, idempotency_key: str) -> list[tuple[str, str]]:
    """The provider's metadata header carrying the attempt's key; none without a provider."""
    return [METADATA_HEADERS[provider](idempotency_key)] if provider else []
