"""The web app: the routers of every resource, wired together (``welcome_mailer.web`` says how it is served)."""

from __future__ import annotations

from importlib.metadata import version

from fastapi import FastAPI

from welcome_mailer.web import contact_list, events, health, ui, unsubscribe


def create_app() -> FastAPI:
    app = FastAPI(title="Welcome mailer", version=version("welcome-mailer"))
    app.include_router(health.router)
    app.include_router(events.router)
    app.include_router(unsubscribe.router)
    ui.install(app)  # the ledger's pages: /ui/
    app.include_router(contact_list.router)  # and its list of contacts: /ui/contacts
    return app
