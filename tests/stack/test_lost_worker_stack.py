"""A lost worker, or lost ledger connections, cost minutes, never an email twice (issue #30, item 2).

The settings under test are include/local/stack/airflow.env's (docker-compose.yaml reads the same file): a task
the dead worker held but had not started stays `queued` until `[scheduler] task_queued_timeout` puts it
back; one it was running stops heartbeating and is retried after `task_instance_heartbeat_timeout`.
Without them the first kind waited over 10 minutes (the default timeout 600 s, checked every 120 s).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import psutil
import pytest
import redis
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


def freeze_the_pool(stack) -> None:
    """SIGSTOP every process of the worker but its main one: the main process goes on taking tasks from the
    broker and handing them to its (frozen) pool, so the tasks it takes stay queued, held, never started."""
    leader = stack.pid("worker")
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if process.pid != leader and os.getpgid(process.pid) == leader:
                process.suspend()


def kill_the_worker(stack, run_ids: list[str], finding: str) -> tuple[datetime, dict]:
    """SIGKILL the worker's process group (no warm shutdown, nothing acknowledged), start a new one 3 s on.
    Returns when it was killed, and the task instances it took with it: those still queued or running
    after the kill (nothing else moves them while no worker runs), among them one `finding` (its state)."""
    try:
        stack.stop("worker", sig=signal.SIGKILL)
        killed = datetime.now(UTC)
        hit = {key: state for key, state in task_states(stack, run_ids).items() if state in ("queued", "running")}
        time.sleep(max(0.0, 3 - (datetime.now(UTC) - killed).total_seconds()))
    finally:
        stack.start("worker")  # whatever happened: the tests after this one need a worker
    assert finding in hit.values(), f"the kill must find tasks {finding}: {hit}"
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


def held_by_the_broker(stack) -> int:
    """Messages the broker has handed to a worker and not had acknowledged (Kombu's Redis transport keeps
    them in its `unacked` hash): with late acknowledgement, the tasks a worker runs and those it holds."""
    return redis.Redis.from_url(stack.config.redis).hlen("unacked")


def assert_recovered(stack, run_ids: list[str], killed: datetime, hit: dict, state: str, domain: str, paths) -> None:
    """Every task instance the kill hit was retried and succeeded in time, every run succeeded, and no
    contact got two emails."""
    retried, succeeded = recovery(stack, run_ids, hit, killed)
    finished = [stack.wait_for_run("welcome_emails", run_id, timeout=180) for run_id in run_ids]
    print(
        f"\nkill while tasks are {state}: {len(hit)} tasks hit ({sorted({key[1] for key in hit})}); all had "
        f"started again {retried:.0f} s after the kill, and succeeded {succeeded:.0f} s after it"
    )
    assert finished == ["success"] * len(run_ids)
    assert retried < RETRIED_WITHIN and succeeded < SUCCEEDED_WITHIN
    assert_proven_from_outside(stack, domain, *paths)


def test_worker_killed_holding_tasks_it_had_not_started(stack):
    paths = overlapping_files(stack, "lostq", runs=4, rows=400, seed=31)
    with ThreadPoolExecutor(4) as pool:
        conf = [{"csv_path": str(path), **SMALL_TASKS} for path in paths]
        run_ids = list(pool.map(lambda c: stack.trigger("welcome_emails", c), conf))

    # parse has no retries (a bad file fails fast), so the pool freezes once every parse is done; the
    # worker's main process then takes the next tasks (up to its concurrency) and they never start.
    wait_until(
        lambda: all(task_states(stack, run_ids).get((run, "parse", -1)) == "success" for run in run_ids),
        120,
        "every parse done",
    )
    freeze_the_pool(stack)

    def held():
        states = task_states(stack, run_ids)
        queued = sum(state == "queued" for state in states.values())
        running = sum(state == "running" for state in states.values())
        return queued and held_by_the_broker(stack) > running  # some of the queued ones are the worker's

    wait_until(held, 60, "the worker holding a queued task")
    killed, hit = kill_the_worker(stack, run_ids, finding="queued")
    assert_recovered(stack, run_ids, killed, hit, "queued", "lostq", paths)


def test_worker_killed_while_its_send_tasks_wait_on_the_esp(stack):
    paths = overlapping_files(stack, "lostr", runs=2, rows=400, seed=33)
    # The ESP accepts 60 messages, then answers nothing: the send tasks are running, with messages out,
    # when the worker dies; the requests it left behind are answered (accepted) once the ESP goes on.
    with esp_faults(stack, latency_ms=100, stall_after_messages=60):
        run_ids = [stack.trigger("welcome_emails", {"csv_path": str(p), **SMALL_TASKS}) for p in paths]

        def sending():
            if not stack.esp.get("/healthz").json()["stalled"]:
                return False
            states = task_states(stack, run_ids)
            return any(key[1] == "send_batch" and state == "running" for key, state in states.items())

        wait_until(sending, 180, "a send task waiting on the ESP with messages out")
        killed, hit = kill_the_worker(stack, run_ids, finding="running")
    assert_recovered(stack, run_ids, killed, hit, "running", "lostr", paths)  # the ESP answering again


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
