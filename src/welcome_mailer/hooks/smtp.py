"""The SMTP side of ``esp_default`` and the bounce mailbox, from Airflow connections.

``esp_default`` of type ``smtp`` is read as Airflow's SMTP provider reads its connection (host, port,
login, password; extras ``from_email``, ``disable_ssl``, ``disable_tls``, ``timeout``, ``retry_limit``,
``ssl_context``), so one connection serves both, plus the extras of this package:

| extra | default | meaning |
|---|---|---|
| ``from_name`` | "" | the From display name |
| ``max_connections`` | 8 | SMTP connections one send task keeps open in parallel |
| ``policy_rejection`` | ``blocked`` | what a 5.7.x reply or report becomes: ``blocked`` or ``bounced`` |
| ``list_unsubscribe`` | "" | List-Unsubscribe URIs, comma-separated, ``{email}`` and ``{key}`` filled in (*) |
| ``settle_seconds`` | 1800 | an accepted message with no bounce report after this long counts as delivered |
| ``provider`` | "" | ``postmark``, ``sendgrid``, ``mailgun`` or ``ses``: the relay's metadata header (**) |

(*) Only when the plugin app's unsubscribe endpoint is not configured (``WELCOME_MAILER_UNSUBSCRIBE_URL``
and ``_SECRET``): then every message carries its signed one-click link, as over HTTP.

(**) Each message carries the idempotency key in that provider's metadata header, so that its webhook
events match mail sent over SMTP (``transports.smtp_metadata``); unset for any other relay.

``bounce_mailbox`` (type ``imap``, optional): host, port, login, password; extras ``use_ssl`` (default
true, as Airflow's IMAP provider), ``starttls``, ``ssl_context`` ("none": no certificate check),
``folder`` (INBOX), ``processed_folder``, ``unmatched_folder``. Without it only the settle time decides.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import BaseHook

from welcome_mailer.outcomes.dsn import DsnSource, MailboxSettings
from welcome_mailer.settings import Settings
from welcome_mailer.transports.smtp import SmtpEmailProvider, SmtpSettings
from welcome_mailer.unsubscribe import UnsubscribeSettings
from welcome_mailer.vocabulary import tag_key

BOUNCE_MAILBOX_CONN_ID = "bounce_mailbox"
DEFAULT_SETTLE_SECONDS = 1800.0  # most asynchronous bounces from real relays come within minutes


def _flag(extra: dict, name: str, default: bool = False) -> bool:
    value = extra.get(name, default)
    return value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes", "on")


def smtp_settings(conn) -> SmtpSettings:
    extra = conn.extra_dejson
    return SmtpSettings(
        host=conn.host or "",
        port=conn.port,
        login=conn.login or "",
        password=conn.password or "",
        from_email=extra.get("from_email", ""),
        from_name=extra.get("from_name", ""),
        use_ssl=not _flag(extra, "disable_ssl"),
        starttls=not _flag(extra, "disable_tls"),
        verify_certificate=extra.get("ssl_context") != "none",
        timeout=float(extra.get("timeout", 30)),
        retry_limit=int(extra.get("retry_limit", 5)),
        max_connections=int(extra.get("max_connections", 8)),
        policy_rejection=extra.get("policy_rejection", "blocked"),
        unsubscribe=UnsubscribeSettings.from_env(),
        list_unsubscribe=extra.get("list_unsubscribe", ""),
        settle_seconds=float(extra.get("settle_seconds", DEFAULT_SETTLE_SECONDS)),
        provider=str(extra.get("provider", "")).strip().lower(),
        key_of_tags=tag_key(Settings.from_env().erase_key),
    )


def smtp_transport(conn) -> SmtpEmailProvider:
    return SmtpEmailProvider(smtp_settings(conn))


def mailbox_settings(conn) -> MailboxSettings:
    extra = conn.extra_dejson
    defaults = MailboxSettings(host="")
    return MailboxSettings(
        host=conn.host or "",
        port=conn.port,
        login=conn.login or "",
        password=conn.password or "",
        use_ssl=_flag(extra, "use_ssl", True),
        starttls=_flag(extra, "starttls"),
        verify_certificate=extra.get("ssl_context") != "none",
        folder=extra.get("folder", defaults.folder),
        processed_folder=extra.get("processed_folder", defaults.processed_folder),
        unmatched_folder=extra.get("unmatched_folder", defaults.unmatched_folder),
        timeout=float(extra.get("timeout", defaults.timeout)),
    )


def dsn_source(settings: SmtpSettings, mailbox_conn_id: str = BOUNCE_MAILBOX_CONN_ID) -> DsnSource:
    """Bounce reports from the ``bounce_mailbox`` connection when there is one, and the settle time."""
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        mailbox = mailbox_settings(BaseHook.get_connection(mailbox_conn_id))
    except AirflowNotFoundException:
        mailbox = None
    return DsnSource(
        mailbox,
        timedelta(seconds=settings.settle_seconds),
        settings.policy_rejection,
        key_of_tags=settings.key_of_tags,
        from_email=settings.from_email,
    )
