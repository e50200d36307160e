"""The email provider from an Airflow connection (``esp_default``): the transport that sends, and the
outcome sources the delivery sensors poll. The connection's type chooses both, through one table,
``TRANSPORTS``: adding a transport is its module in ``welcome_mailer.transports`` and a row here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from airflow.sdk import BaseHook

from welcome_mailer.outcomes import OutcomeSource
from welcome_mailer.transports import EmailProvider

if TYPE_CHECKING:  # the ledger is loaded by the tasks that send, not by every component that lists hooks
    from welcome_mailer.ledger import Ledger
    from welcome_mailer.ledger.limits import ProviderLimits, SendLimiter

ESP_CONN_ID = "esp_default"
DEFAULT_TIMEOUT = 30.0
OUTCOME_LOOKUPS_VARIABLE = "welcome_mailer_outcome_lookups"  # "off": outcomes only from pushed events


def _http_transport(conn) -> EmailProvider:
    """The contract v1 REST API: host (or a whole base URL), port, schema = URL scheme, password = API key."""
    from welcome_mailer.transports.http import HttpEmailProvider
    from welcome_mailer.unsubscribe import UnsubscribeSettings

    extra = conn.extra_dejson
    base_url = conn.host or ""
    if "://" not in base_url:
        # The scheme is in the connection's schema field, as Airflow's HTTP connections have it.
        # The extra's "scheme" is what earlier versions of this package read; still honoured.
        scheme = conn.schema or extra.get("scheme") or "http"
        port = f":{conn.port}" if conn.port else ""
        base_url = f"{scheme}://{base_url}{port}"
    return HttpEmailProvider(
        base_url,
        conn.password or "",
        timeout=float(extra.get("timeout", DEFAULT_TIMEOUT)),
        unsubscribe=UnsubscribeSettings.from_env(),
    )


def _http_sources(transport: EmailProvider) -> list[OutcomeSource]:
    """The HTTP status lookup, unless the Airflow Variable ``welcome_mailer_outcome_lookups`` = ``off``
    (a provider that posts its events to the plugin app's webhooks; read at every poke: switchable while
    runs go on)."""
    from airflow.sdk import Variable

    from welcome_mailer.outcomes.http_lookup import HttpLookupSource
    from welcome_mailer.settings import Settings

    if Variable.get(OUTCOME_LOOKUPS_VARIABLE, default="on").strip().lower() == "off":
        return []
    return [HttpLookupSource(transport, Settings.from_env().requests_in_flight)]


def _smtp_transport(conn) -> EmailProvider:
    from welcome_mailer.hooks.smtp import smtp_transport

    return smtp_transport(conn)


def _smtp_sources(transport: EmailProvider) -> list[OutcomeSource]:
    """The bounce mailbox and the settle time (``hooks.smtp.dsn_source``)."""
    from welcome_mailer.hooks.smtp import dsn_source

    return [dsn_source(transport.settings)]


@dataclass(frozen=True)
class Transport:
    """One kind of email provider connection."""

    conn_types: tuple[str, ...]  # the connection types that choose it
    build: Callable[[object], EmailProvider]  # from the Airflow connection
    # The sources the delivery sensors poll for its messages (pushed outcomes, such as webhooks, need
    # none: they land in the ledger by themselves).
    outcome_sources: Callable[[EmailProvider], list[OutcomeSource]]


TRANSPORTS: dict[str, Transport] = {  # by EmailProvider.kind
    # The contract v1 REST API; "http" as Airflow's HTTP provider names its connections.
    "http": Transport(("welcome_mailer_esp", "http"), _http_transport, _http_sources),
    # Any relay, its connection read as Airflow's SMTP provider reads it (hooks/smtp.py).
    "smtp": Transport(("smtp",), _smtp_transport, _smtp_sources),
}
_BY_CONN_TYPE = {conn_type: t for t in TRANSPORTS.values() for conn_type in t.conn_types}


class EspHook(BaseHook):
    """The email provider's connection: an HTTP API (contract v1; extra ``timeout``) or an SMTP relay
    (``hooks/smtp.py`` lists its extras); either may carry the account's limits (``limits``)."""

    conn_name_attr = "esp_conn_id"
    default_conn_name = ESP_CONN_ID
    conn_type = "welcome_mailer_esp"
    hook_name = "Welcome mailer: email provider (HTTP API)"

    def __init__(self, esp_conn_id: str = ESP_CONN_ID) -> None:
        super().__init__()
        self.esp_conn_id = esp_conn_id
        self._connection = None

    def connection(self):
        """The Airflow connection, read once per hook."""
        if self._connection is None:
            self._connection = self.get_connection(self.esp_conn_id)
        return self._connection

    def get_conn(self) -> EmailProvider:
        """The transport; close it (or use it as a context manager) when done."""
        conn = self.connection()
        transport = _BY_CONN_TYPE.get(conn.conn_type)
        if transport is None:
            raise ValueError(
                f"connection {self.esp_conn_id!r} is of type {conn.conn_type!r}; the email provider's "
                f"connection must be of type {' or '.join(_BY_CONN_TYPE)}"
            )
        return transport.build(conn)

    def limits(self) -> ProviderLimits:
        """The account's limits, from the connection's extras ``max_messages_per_second`` and
        ``max_messages_per_24h`` (absent: no limit), shared by every connection of the same id."""
        from welcome_mailer.ledger.limits import ProviderLimits

        return ProviderLimits.from_extra(self.esp_conn_id, self.connection().extra_dejson)

    def send_limiter(self, ledger: Ledger) -> SendLimiter | None:
        """A send task's limiter (None when the account has no limits), shared through the ledger."""
        from welcome_mailer.ledger.limits import SendLimiter

        limits = self.limits()
        return SendLimiter(ledger.engine, limits) if limits.limited else None

    @staticmethod
    def outcome_sources(transport: EmailProvider) -> list[OutcomeSource]:
        """The sources the delivery sensors poll for this transport's messages."""
        return TRANSPORTS[transport.kind].outcome_sources(transport)

    def test_connection(self) -> tuple[bool, str]:
        """Reach the provider and prove the credentials, sending nothing."""
        try:
            with self.get_conn() as transport:
                transport.check()
        except Exception as exc:  # the message is the answer the UI shows
            return False, str(exc)
        return True, "Connection successfully tested: the provider accepted the credentials"
