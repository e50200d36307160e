"""The plugin app started on its own (``python -m welcome_mailer.web``, ``make events``), for the
embedded default: a real HTTP server, a real SQLite ledger, the unsubscribe flow and a signed webhook."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx

from include.local.net import free_port, wait_healthy
from tests.support import PROJECT_ROOT
from tests.support.ledger import contact_status, sent
from tests.support.webhook_payloads import mock_push
from welcome_mailer.ledger import Ledger, connect
from welcome_mailer.ledger.migrate import upgrade
from welcome_mailer.unsubscribe import UnsubscribeSettings, list_unsubscribe_headers


def test_the_app_alone_takes_signed_events_and_one_click_unsubscribes(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    engine = connect(url)
    upgrade(engine)
    ledger = Ledger(engine)
    ids = sent(ledger, "run", "a@example.com", "b@example.com")
    port = free_port()
    base = f"http://127.0.0.1:{port}/welcome-mailer"
    unsubscribe = UnsubscribeSettings(f"{base}/unsubscribe", "unsub-secret")
    env = {
        **os.environ,
        "WELCOME_MAILER_LEDGER_URL": url,
        "WELCOME_MAILER_MOCK_WEBHOOK_SECRET": "push-secret",
        "WELCOME_MAILER_UNSUBSCRIBE_URL": unsubscribe.url,
        "WELCOME_MAILER_UNSUBSCRIBE_SECRET": unsubscribe.secret,
    }
    args = [sys.executable, "-m", "welcome_mailer.web", "--port", str(port)]
    with (tmp_path / "web.log").open("w") as log:
        process = subprocess.Popen(args, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_healthy(f"{base}/health", process)
        body, headers = mock_push(
            "push-secret", [{"event_id": "1", "message_id": ids["b@example.com"], "status": "bounced"}]
        )
        assert httpx.post(f"{base}/events/mock", content=body, headers=headers).json()["applied"] == 1
        assert (
            httpx.post(
                f"{base}/events/mock", content=body, headers={**headers, "X-Mock-Esp-Signature": "t=1,v1=0"}
            ).status_code
            == 403
        )
        link = list_unsubscribe_headers("a@example.com", unsubscribe)["List-Unsubscribe"][1:-1]
        assert "Unsubscribe" in httpx.get(link).text
        one_click = httpx.post(link, content="List-Unsubscribe=One-Click",
                               headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
        assert one_click.status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert contact_status(ledger, "a@example.com") == "unsubscribed"
    assert contact_status(ledger, "b@example.com") == "bounced"
    assert "refused mock webhook" in (tmp_path / "web.log").read_text()
    engine.dispose()
