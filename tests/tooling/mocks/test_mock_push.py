"""The mock ESP's push mode drives a whole send to the right outcomes with no lookup: the mock posts
signed events (with duplicates, retrying while the receiver is down) to the plugin app, which records
them in the ledger; proven from the mock's own log. Without Airflow: the pipeline's functions, a mock
ESP process, the app on its own."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from include.local.net import free_port, wait_healthy
from tests.support import PROJECT_ROOT
from tests.support.invariants import assert_ledger_matches, messages_by_recipient
from tests.support.ledger import stage_and_claim
from welcome_mailer import pipeline
from welcome_mailer.ledger import Ledger, connect
from welcome_mailer.ledger.migrate import upgrade
from welcome_mailer.transports.http import HttpEmailProvider


def test_pushed_events_alone_resolve_every_message(tmp_path, start_esp):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    engine = connect(url)
    upgrade(engine)
    ledger = Ledger(engine)
    port = free_port()
    esp = start_esp(
        push_url=f"http://127.0.0.1:{port}/welcome-mailer/events/mock",
        push_secret="push-secret",
        push_duplicate_rate=0.3,
        push_batch_size=50,
        hold_max_seconds=2,
    )
    emails = [f"c{i}@example.com" for i in range(300)]
    claimed = stage_and_claim(ledger, "run", emails, batch_size=100)
    with HttpEmailProvider(esp.url, esp.api_key) as transport:
        for batch_no in claimed.batches:
            pipeline.send_batch(ledger, transport, "run", batch_no, 100)
    time.sleep(0.5)  # the receiver is not up yet: the mock's first posts fail, and are retried
    env = {**os.environ, "WELCOME_MAILER_LEDGER_URL": url, "WELCOME_MAILER_MOCK_WEBHOOK_SECRET": "push-secret"}
    with (tmp_path / "web.log").open("w") as log:
        web = subprocess.Popen(
            [sys.executable, "-m", "welcome_mailer.web", "--port", str(port)],
            cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_healthy(f"http://127.0.0.1:{port}/welcome-mailer/health", web)
        deadline = time.monotonic() + 60
        while pipeline.collect_outcomes(ledger, [], "run")[1] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ledger.count_awaiting_outcome("run") == 0
        health = esp.client.get("/healthz").json()
        assert health["lookups"] == 0 and health["pushed"] > 300 and health["failed_pushes"] > 0, health
    finally:
        web.terminate()
        web.wait(timeout=10)
    messages = esp.messages()
    statuses = {email: history[-1]["status"] for email, history in messages_by_recipient(messages).items()}
    assert set(statuses) == set(emails)
    ledger.close_out("run", 1)  # blocked contacts close as failed, as the DAG's close_out does
    assert_ledger_matches(url, messages)
    assert {"delivered", "bounced", "blocked"} <= set(statuses.values())
    engine.dispose()
