"""The Airflow plugin: the package's web endpoints, mounted on the api-server under /welcome-mailer.

Registered through the ``airflow.plugins`` entry point (pyproject.toml), so nothing of the package lives
in the plugins folder (Airflow imports every file there as a top-level module). Every Airflow component
loads plugins, so this module imports nothing heavy: the FastAPI app is built on its first request.
Airflow does not authenticate plugin apps: each endpoint checks its own callers (``welcome_mailer.web``).
"""

from __future__ import annotations

from typing import ClassVar

from airflow.plugins_manager import AirflowPlugin

from welcome_mailer.settings import URL_PREFIX


class _AppOnFirstRequest:
    """An ASGI app that builds the real one when the api-server first routes a request to it."""

    def __init__(self) -> None:
        self._app = None

    async def __call__(self, scope, receive, send) -> None:
        if self._app is None:
            from welcome_mailer.web.app import create_app

            self._app = create_app()
        await self._app(scope, receive, send)


NAV_LABEL = "Mailer"


class WelcomeMailerPlugin(AirflowPlugin):
    name = "welcome_mailer"
    fastapi_apps: ClassVar[list[dict]] = [
        {"app": _AppOnFirstRequest(), "url_prefix": URL_PREFIX, "name": "Welcome mailer"}
    ]
    # The ledger's pages (welcome_mailer.web.ui) in the UI's navigation, shown inside the Airflow UI. The
    # side bar's buttons are 56 px wide and cut their label to one line (10 px type): "Welcome mailer"
    # needs 72 px and showed as "Welcome ma...", so the button says "Mailer" (27 px); the pages' own
    # heading says "Welcome mailer" (tests/stack/test_ui_browser.py measures the label).
    external_views: ClassVar[list[dict]] = [
        {
            "name": NAV_LABEL,
            "href": f"{URL_PREFIX}/ui/",
            "url_route": "welcome-mailer",
            "destination": "nav",
            "nav_top_level": True,  # its own entry in the side bar, not under "Plugins"
        }
    ]
