"""The email provider from an Airflow connection (``esp_default``): the transport that sends, and the
outcome sources the delivery sensors poll. The connection's type chooses them."""

from __future__ import annotations

from airflow.sdk import BaseHook

from welcome_mailer.outcomes import OutcomeSource
from welcome_mailer.transports import EmailProvider

ESP_CONN_ID = "esp_default"
HTTP_CONN_TYPES = ("welcome_mailer_esp", "http")  # the contract v1 REST API; "http" as Airflow's HTTP provider
DEFAULT_TIMEOUT = 30.0
OUTCOME_LOOKUPS_VARIABLE = "welcome_mailer_outcome_lookups"  # "off": outcomes only from pushed events


class EspHook(BaseHook):
    """An email provider's HTTP API (contract v1): host (or a whole base URL), port, schema = URL scheme
    (http or https, as Airflow's HTTP connections have it), password = API key; extra ``timeout``."""

    conn_name_attr = "esp_conn_id"
    default_conn_name = ESP_CONN_ID
    conn_type = "welcome_mailer_esp"
    hook_name = "Welcome mailer: email provider (HTTP API)"

    def __init__(self, esp_conn_id: str = ESP_CONN_ID) -> None:
        super().__init__()
        self.esp_conn_id = esp_conn_id

    def get_conn(self) -> EmailProvider:
        """The transport; close it (or use it as a context manager) when done."""
        from welcome_mailer.transports.http import HttpEmailProvider
        from welcome_mailer.unsubscribe import UnsubscribeSettings

        conn = self.get_connection(self.esp_conn_id)
        if conn.conn_type not in HTTP_CONN_TYPES:
            raise ValueError(
                f"connection {self.esp_conn_id!r} is of type {conn.conn_type!r}; "
                f"the email provider's connection must be of type {' or '.join(HTTP_CONN_TYPES)}"
            )
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

    @staticmethod
    def outcome_sources(transport: EmailProvider) -> list[OutcomeSource]:
        """The sources the delivery sensors poll for this transport's messages (pushed outcomes, such as
        webhooks, need none: they land in the ledger by themselves). The Airflow Variable
        ``welcome_mailer_outcome_lookups`` = ``off`` turns the HTTP lookup off, for a provider that posts
        its events to the plugin app's webhooks (read at every poke: switchable while runs go on)."""
        from airflow.sdk import Variable

        from welcome_mailer.outcomes.http_lookup import HttpLookupSource
        from welcome_mailer.transports.http import HttpEmailProvider

        if Variable.get(OUTCOME_LOOKUPS_VARIABLE, default="on").strip().lower() == "off":
            return []
        return [HttpLookupSource(transport)] if isinstance(transport, HttpEmailProvider) else []

    def test_connection(self) -> tuple[bool, str]:
        """Reach the provider and prove the API key: a status lookup of an id nobody has."""
        try:
            with self.get_conn() as transport:
                transport.lookup(["welcome-mailer-connection-test"])
        except Exception as exc:  # the message is the answer the UI shows
            return False, str(exc)
        return True, "Connection successfully tested: the provider accepted the API key"
