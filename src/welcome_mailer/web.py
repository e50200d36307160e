"""The package's web app, mounted on Airflow's api-server by the plugin (``welcome_mailer.plugin``)."""

from __future__ import annotations

from importlib.metadata import version

from fastapi import FastAPI


def create_app() -> FastAPI:
    app = FastAPI(title="Welcome mailer", version=version("welcome-mailer"))

    @app.get("/health")
    def health() -> dict:
        """Liveness of the plugin app; says nothing about the ledger (no caller is authenticated here)."""
        return {"status": "ok", "version": version("welcome-mailer")}

    return app
