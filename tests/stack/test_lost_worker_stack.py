"""A lost worker, or lost ledger connections, cost minutes, never an email twice (issue #30, item 2).

The settings under test are include/local/stack/airflow.env's (docker-compose.yaml reads the same file): a task
the dead worker held but had not started stays `queued` until `[scheduler] task_queued_timeout` puts it
back; one it was running stops heartbeating and is retried after `task_instance_heartbeat_timeout`.
Without them the first kind waited over 10 minutes (the default timeout 600 s, checked every 120 s).
"""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest
from sqlalchemy import create_engine, text

from include.tools.generate_contacts import generate_rows
from tests.stack.helpers import assert_proven_from_outside, esp_faults, messages_for, with_domain

pytestmark = [pytest.mark.slow, pytest.mark.stack]

RETRIED_WITHIN = 120  # seconds from the loss until every task it hit has started again (the promise)
SUCCEEDED_WITHIN = RETRIED_WITHIN + 30  # ... and has succeeded (short tasks)
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


def task_instances(stack, run_ids: list[str]) -> dict[tuple[str, str, int], dict]:
    """(run, task, map index) -> the task instance as the REST API shows it, for every one of the runs."""
    found = {}
    for run_id in run_ids:
        path = f"/api/v2/dags/welcome_emails/dagRuns/{run_id}/taskInstances"
        for ti in stack.api("GET", path, params={"limit": 1000}).json()["task_instances"]:
            found[(run_id, ti["task_id"], ti["map_index"])] = ti
    return found


def task_states(stack, run_ids: list[str]) -> dict[tuple[str, str, int], str]:
    return {key: ti["state"] for key, ti in task_instances(stack, run_ids).items()}


def wait_until(condition, timeout: float, what: str, poll: float = 0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(poll)
    pytest.fail(f"not within {timeout:.0f} s: {what}")


def kill_the_worker(stack, run_ids: list[str]) -> tuple[datetime, dict]:
    """SIGKILL the worker's process group (no warm shutdown, nothing acknowledged), start a new one 3 s on.
    Returns when it was killed, and the task instances it took with it: those still queued or running
    after the kill (nothing else moves them while no worker runs)."""
    try:
        stack.stop("worker", sig=signal.SIGKILL)
        killed = datetime.now(UTC)
        hit = {key: state for key, state in task_states(stack, run_ids).items() if state in ("queued", "running")}
        time.sleep(max(0.0, 3 - (datetime.now(UTC) - killed).total_seconds()))
    finally:
        stack.start("worker")  # whatever happened: the tests after this one need a worker
    return killed, hit


def recovery(stack, run_ids: list[str], hit: dict, killed: datetime) -> tuple[float, float]:
    """Seconds from the kill until every task instance it hit had started again, and had succeeded."""

    def all_done():
        instances = task_instances(stack, run_ids)
        failed = {key for key in hit if instances[key]["state"] in ("failed", "upstream_failed")}
        assert not failed, f"tasks the kill hit failed instead of being retried: {failed}"
        return instances if all(instances[key]["state"] == "success" for key in hit) else None

    instances = wait_until(all_done, SUCCEEDED_WITHIN + 30, f"the tasks the kill hit succeed: {sorted(hit)}", poll=1)
    succeeded = (datetime.now(UTC) - killed).total_seconds()
    restarts = [datetime.fromisoformat(instances[key]["start_date"]) for key in hit]
    assert min(restarts) > killed, "every task the kill hit ran again after it"
    return (max(restarts) - killed).total_seconds(), succeeded


def test_worker_killed_while_tasks_are_queued_and_again_while_they_run(stack):
    paths = overlapping_files(stack, "lost", runs=4, rows=400, seed=31)
    with esp_faults(stack, latency_ms=1000):  # slow sends: a wide window for the second kill
        with ThreadPoolExecutor(4) as pool:
            conf = [{"csv_path": str(path), **SMALL_TASKS} for path in paths]
            run_ids = list(pool.map(lambda c: stack.trigger("welcome_emails", c), conf))

        # 1. Tasks queued: handed to the worker (reserved, or starting) but not running yet. parse has no
        # retries (a bad file fails fast), so the kill waits until every parse is done.
        def queued_after_every_parse():
            states = task_states(stack, run_ids)
            parsed = all(states.get((run, "parse", -1)) == "success" for run in run_ids)
            queued = {key for key, state in states.items() if state == "queued"}
            return parsed and queued

        wait_until(queued_after_every_parse, 120, "a task queued after every parse")
        first_kill, hit_first = kill_the_worker(stack, run_ids)
        assert "queued" in hit_first.values(), f"the kill must find tasks queued: {hit_first}"

        # 2. Tasks running: send tasks with their first messages out.
        def sending():
            # The ESP's log first: after the other stack tests it is long and takes seconds to read, so
            # the send tasks are looked at last, just before the kill (the other way round, they could
            # finish while the log was read, and the kill found none running).
            if not messages_for(stack, "lost"):
                return False
            states = task_states(stack, run_ids)
            return {key for key, state in states.items() if key[1] == "send_batch" and state == "running"}

        wait_until(sending, 180, "a send task running with messages out")
        second_kill, hit_second = kill_the_worker(stack, run_ids)
        assert "running" in hit_second.values(), f"the kill must find tasks running: {hit_second}"

        first = recovery(stack, run_ids, hit_first, first_kill)
        second = recovery(stack, run_ids, hit_second, second_kill)
        finished = [stack.wait_for_run("welcome_emails", run_id, timeout=180) for run_id in run_ids]
    for what, hit, (retried, succeeded) in (("queued", hit_first, first), ("running", hit_second, second)):
        print(
            f"\nkill while tasks are {what}: {len(hit)} tasks hit ({sorted({key[1] for key in hit})}); all had "
            f"started again {retried:.0f} s after the kill, and succeeded {succeeded:.0f} s after it"
        )
    assert finished == ["success"] * 4
    assert max(first[0], second[0]) < RETRIED_WITHIN and max(first[1], second[1]) < SUCCEEDED_WITHIN
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
