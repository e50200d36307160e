"""A lost worker, or lost ledger connections, cost minutes, never an email twice (issue #30, item 2).

The settings under test are include/stack/airflow.env's (docker-compose.yaml reads the same file): a task
the dead worker held but had not started stays `queued` until `[scheduler] task_queued_timeout` puts it
back; one it was running stops heartbeating and is retried after `task_instance_heartbeat_timeout`.
Without them the first kind waited over 10 minutes (the default timeout 600 s, checked every 120 s).
"""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import create_engine, text

from include.generate_contacts import generate_rows
from tests.stack.helpers import assert_proven_from_outside, esp_faults, messages_for, with_domain

pytestmark = [pytest.mark.slow, pytest.mark.stack]

RECOVERY_LIMIT = 120  # seconds from the loss until every task it hit has run again and succeeded (+ its run time)
SMALL_TASKS = {"batch_size": 25, "min_contacts_per_send_task": 50}  # several short send tasks per run


def overlapping_files(stack, domain: str, runs: int, rows: int, seed: int) -> list:
    """`runs` files that share most of their contacts, so overlapping runs compete for the same claims."""
    lines = list(generate_rows(rows + (runs - 1) * rows // 4, seed=seed))
    paths = []
    for n in range(runs):
        path = stack.data / f"{domain}{n}.csv"
        part = lines[n * rows // 4 : n * rows // 4 + rows]
        path.write_text("\n".join(with_domain(line, domain) for line in part) + "\n")
        paths.append(path)
    return paths


def task_states(stack, run_ids: list[str]) -> dict[tuple[str, str, int], str]:
    """(run, task, map index) -> state, for every task instance of the runs."""
    states = {}
    for run_id in run_ids:
        path = f"/api/v2/dags/welcome_emails/dagRuns/{run_id}/taskInstances"
        for ti in stack.api("GET", path, params={"limit": 1000}).json()["task_instances"]:
            states[(run_id, ti["task_id"], ti["map_index"])] = ti["state"]
    return states


def wait_until(condition, timeout: float, what: str, poll: float = 0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(poll)
    pytest.fail(f"not within {timeout:.0f} s: {what}")


def kill_the_worker(stack) -> float:
    """SIGKILL the worker's process group (no warm shutdown, nothing acknowledged), start a new one 3 s on."""
    try:
        stack.stop("worker", sig=signal.SIGKILL)
        killed = time.monotonic()
        time.sleep(3)
    finally:
        stack.start("worker")  # whatever happened: the tests after this one need a worker
    return killed


def recovery_seconds(stack, run_ids: list[str], hit: set, killed: float) -> float:
    """Seconds from the kill until every task instance it hit has succeeded (on a later try)."""

    def all_done():
        states = task_states(stack, run_ids)
        failed = {key for key in hit if states[key] in ("failed", "upstream_failed")}
        assert not failed, f"tasks the kill hit failed instead of being retried: {failed}"
        return all(states[key] == "success" for key in hit)

    wait_until(all_done, RECOVERY_LIMIT + 60, f"the tasks the kill hit succeed again: {sorted(hit)}", poll=1)
    return time.monotonic() - killed


def test_worker_killed_while_tasks_are_queued_and_again_while_they_run(stack):
    paths = overlapping_files(stack, "lost", runs=4, rows=400, seed=31)
    with esp_faults(stack, latency_ms=150):  # slow sends: a wide window for the second kill
        with ThreadPoolExecutor(4) as pool:
            conf = [{"csv_path": str(path), **SMALL_TASKS} for path in paths]
            run_ids = list(pool.map(lambda c: stack.trigger("welcome_emails", c), conf))

        # 1. Tasks queued: handed to the worker (reserved, or starting) but not running yet. parse has no
        # retries (a bad file fails fast), so the kill waits until every parse is done.
        def queued_after_every_parse():
            states = task_states(stack, run_ids)
            parsed = all(states.get((run, "parse", -1)) == "success" for run in run_ids)
            queued = {key for key, state in states.items() if state == "queued"}
            return (states, queued) if parsed and queued else None

        states, _ = wait_until(queued_after_every_parse, 120, "a task queued after every parse")
        first_kill = kill_the_worker(stack)
        hit_first = {key for key, state in states.items() if state in ("queued", "running")}

        # 2. Tasks running: send tasks with their first messages out.
        def sending():
            states = task_states(stack, run_ids)
            running = {key for key, state in states.items() if key[1] == "send_batch" and state == "running"}
            return states if running and messages_for(stack, "lost") else None

        states = wait_until(sending, 180, "a send task running with messages out")
        second_kill = kill_the_worker(stack)
        hit_second = {key for key, state in states.items() if state in ("queued", "running")}

        recovered_first = recovery_seconds(stack, run_ids, hit_first, first_kill)
        recovered_second = recovery_seconds(stack, run_ids, hit_second, second_kill)
        finished = [stack.wait_for_run("welcome_emails", run_id, timeout=180) for run_id in run_ids]
    print(
        f"\nkill while queued: {len(hit_first)} tasks hit ({sorted({k[1] for k in hit_first})}), all succeeded "
        f"{recovered_first:.0f} s after the kill; kill while running: {len(hit_second)} tasks hit, "
        f"{recovered_second:.0f} s"
    )
    assert finished == ["success"] * 4
    assert recovered_first < RECOVERY_LIMIT + 30 and recovered_second < RECOVERY_LIMIT + 30
    assert_proven_from_outside(stack, "lost", *paths)


def test_every_ledger_connection_terminated_mid_run(stack):
    paths = overlapping_files(stack, "cut", runs=2, rows=600, seed=32)
    admin = create_engine(f"{stack.config.postgres}/postgres", isolation_level="AUTOCOMMIT")
    terminate = text(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = :ledger AND pid <> pg_backend_pid()"
    )
    try:
        with esp_faults(stack, latency_ms=150):
            run_ids = [stack.trigger("welcome_emails", {"csv_path": str(p), **SMALL_TASKS}) for p in paths]

            def sending():
                states = task_states(stack, run_ids)
                parsed = all(states.get((run, "parse", -1)) == "success" for run in run_ids)
                running = any(key[1] == "send_batch" and state == "running" for key, state in states.items())
                return parsed and running and messages_for(stack, "cut")

            wait_until(sending, 180, "a send task running with messages out")
            cut = []
            for _ in range(3):  # and again while the tasks reconnect
                with admin.connect() as conn:
                    cut.append(conn.execute(terminate, {"ledger": stack.config.ledger_db}).scalar())
                time.sleep(2)
            finished = [stack.wait_for_run("welcome_emails", run_id, timeout=210) for run_id in run_ids]
    finally:
        admin.dispose()
    print(f"\nledger connections terminated: {cut}")
    assert cut[0] > 0, "the cut must land while the tasks hold ledger connections"
    assert finished == ["success"] * 2
    assert_proven_from_outside(stack, "cut", *paths)
