"""``GET /health`` of the plugin app fails (503) when the ledger cannot be opened (issue 30, item 6): a
one-click POST then got HTTP 500 while /health said ok."""

from __future__ import annotations

import os

from fastapi.testclient import TestClient

from include.local.run_embedded import embedded_ledger_url
from welcome_mailer.ledger import Ledger, connect
from welcome_mailer.web import __main__ as alone
from welcome_mailer.web.app import create_app
from welcome_mailer.web.ledger import ledger_source


def health_with(source) -> tuple[int, dict]:
    app = create_app()
    app.dependency_overrides[ledger_source] = lambda: source
    with TestClient(app) as client:
        answer = client.get("/health")
    return answer.status_code, answer.json()


def test_health_is_ok_on_a_ledger_at_head(ledger):
    status, body = health_with(lambda: ledger)
    assert (status, body["status"]) == (200, "ok")


def test_health_fails_on_a_ledger_without_the_schema(tmp_path):
    engine = connect(f"sqlite:///{tmp_path / 'empty.db'}")  # a new file: what a wrong path opens
    status, body = health_with(lambda: Ledger(engine))
    engine.dispose()
    assert (status, body["status"]) == (503, "ledger unavailable")
    assert "empty.db" not in str(body), "the answer names no database: nobody is authenticated here"


def test_health_fails_when_the_ledger_cannot_be_reached(caplog):
    def unreachable() -> Ledger:
        raise ConnectionRefusedError("connection refused")

    with caplog.at_level("WARNING", logger="welcome_mailer.web.health"):
        status, body = health_with(unreachable)
    assert (status, body["status"]) == (503, "ledger unavailable")
    assert any("connection refused" in r.getMessage() for r in caplog.records), "the log says why"


def test_the_app_alone_uses_make_runs_ledger_under_welcome_mailer_home(tmp_path, monkeypatch):
    """``python -m welcome_mailer.web`` (make events) opens the ledger make run writes, under the same home."""
    monkeypatch.setenv("WELCOME_MAILER_HOME", str(tmp_path / "home"))
    # main() sets the variable for its process: recorded here first, so monkeypatch removes it again after the
    # test (a delenv of an unset variable records nothing, and the URL leaked into every later test's env).
    monkeypatch.setenv("WELCOME_MAILER_LEDGER_URL", "unset-after-the-test")
    monkeypatch.delenv("WELCOME_MAILER_LEDGER_URL")
    monkeypatch.delenv("AIRFLOW_CONN_CONTACTS_DB", raising=False)
    monkeypatch.setattr(alone.uvicorn, "run", lambda app, **kw: None)
    alone.main([])
    assert os.environ["WELCOME_MAILER_LEDGER_URL"] == embedded_ledger_url()
    assert embedded_ledger_url() == f"sqlite:///{tmp_path / 'home' / 'data' / 'ledger.db'}"
