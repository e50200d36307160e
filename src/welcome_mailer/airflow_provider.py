"""What Airflow discovers about this package, the way it discovers provider packages: through the
``apache_airflow_provider`` entry point (pyproject.toml), which returns ``get_provider_info()``.

Connection forms are declared here (``conn-fields`` / ``ui-field-behaviour``), as Airflow 3.2+ wants
them: the UI reads them without importing the hooks, and the hooks' older
``get_connection_form_widgets`` / ``get_ui_field_behaviour`` methods are deprecated there.
The plugin is registered by the ``airflow.plugins`` entry point alone: listing it here too would make
Airflow load it twice and report the second as an import error.
"""

from __future__ import annotations

from importlib.metadata import version


def get_provider_info() -> dict:
    return {
        "package-name": "welcome-mailer",
        "name": "Welcome mailer",
        "description": 'One "Hi {name}, Welcome!" email per contact, at most once, ever.',
        "versions": [version("welcome-mailer")],
        "integrations": [
            {"integration-name": "Welcome mailer", "tags": ["service"]},
        ],
        "hooks": [
            {
                "integration-name": "Welcome mailer",
                "python-modules": ["welcome_mailer.hooks.esp", "welcome_mailer.hooks.ledger"],
            }
        ],
        "connection-types": [
            {
                "connection-type": "welcome_mailer_esp",
                "hook-class-name": "welcome_mailer.hooks.esp.EspHook",
                "hook-name": "Welcome mailer: email provider (HTTP API)",
                "conn-fields": {
                    "timeout": {
                        "label": "Timeout (seconds)",
                        "description": "Per request; failed requests are retried with backoff.",
                        "schema": {"type": ["number", "null"], "default": 30, "minimum": 1},
                    },
                },
                "ui-field-behaviour": {
                    "hidden-fields": ["login", "extra"],
                    "relabeling": {"host": "Host or base URL", "schema": "Scheme", "password": "API key"},
                    "placeholders": {"host": "api.example.com", "schema": "https", "port": "443"},
                },
            }
        ],
    }
