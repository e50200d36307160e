"""A whole run through `airflow dags test` meets the reputation guard: it ends failed, with the guard's
figures in its report, and the blocked contacts it would have resent are released, not resent."""

from __future__ import annotations

import pytest

from tests.e2e.test_welcome_run import run_welcome, sqlite_ledger

pytestmark = pytest.mark.slow


def test_a_run_on_a_list_with_40_percent_bounces_ends_failed_at_the_guard(migrated_airflow_home, workspace, start_esp):
    esp = start_esp(hold_rate=0, delivered_rate=0.4, bounced_rate=0.4, blocked_rate=0.2)
    (workspace / "data" / "contacts.csv").write_text("".join(f"User {i}, user{i}@example.com\n" for i in range(400)))
    ledger_connection, _ = sqlite_ledger(workspace)
    result = run_welcome(
        migrated_airflow_home, workspace, esp, ledger_connection, "contacts.csv", guard_min_outcomes=100
    )
    assert result.state == "failed", result.output[-3000:]
    assert "reputation guard" in result.output
    limits = result.report["limits"]
    assert limits["guard_stopped_at"] and limits["guard"]["bounce_rate"] > 0.2
    messages = esp.messages()
    assert len(messages) == 400, "each contact emailed once; the blocked ones were released, not resent"
    assert all(m["idempotency_key"].endswith("-1") for m in messages)
