"""The plugin app on its own, for the embedded default (no api-server): ``python -m welcome_mailer.web``
(``make events``). The ledger comes from ``WELCOME_MAILER_LEDGER_URL`` or ``AIRFLOW_CONN_CONTACTS_DB``,
else it is ``make run``'s (``<WELCOME_MAILER_HOME>/data/ledger.db``: ``settings.local_data``); secrets as
under the api-server (``welcome_mailer.web.events``). Paths are those of the api-server: under ``--prefix``
(/welcome-mailer)."""

from __future__ import annotations

import argparse
import os

import uvicorn
from fastapi import FastAPI

from welcome_mailer.settings import URL_PREFIX, local_data
from welcome_mailer.web.app import create_app


def build_app(prefix: str) -> FastAPI:
    if not prefix:
        return create_app()
    outer = FastAPI()
    outer.mount(prefix, create_app())
    return outer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m welcome_mailer.web", description=__doc__)
    parser.add_argument("--host", default=os.environ.get("WELCOME_MAILER_WEB_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("WELCOME_MAILER_WEB_PORT", "8026")))
    parser.add_argument("--prefix", default=URL_PREFIX, help=f"URL prefix, as on the api-server ({URL_PREFIX})")
    args = parser.parse_args(argv)
    if not (os.environ.get("WELCOME_MAILER_LEDGER_URL") or os.environ.get("AIRFLOW_CONN_CONTACTS_DB")):
        os.environ["WELCOME_MAILER_LEDGER_URL"] = f"sqlite:///{local_data() / 'ledger.db'}"  # make run's
    uvicorn.run(build_app(args.prefix), host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
