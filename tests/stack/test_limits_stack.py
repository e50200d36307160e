"""The send rate on the real local stack: 2 runs at once, 8 send tasks each, through one provider account
limited to RATE messages a second; measured from the mock ESP's acceptance timestamps."""

from __future__ import annotations

import json
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import pytest

from include.local.net import free_port
from include.local.stack import Stack, StackConfig
from tests.stack.conftest import _redis_available
from tests.support.esp import launch_esp
from tests.support.limits import busiest_window

pytestmark = [pytest.mark.slow, pytest.mark.stack, pytest.mark.alone]
RATE = 150


@pytest.fixture
def limited_stack(postgres_server, tmp_path):
    if not _redis_available():
        pytest.skip("Redis not reachable at 127.0.0.1:6379")
    # The account's own mock ESP, enforcing the same rate (429 above it), and the stack's connection to it.
    esp = launch_esp(tmp_path, hold_rate=0, max_messages_per_second=RATE)
    connection = esp.connection | {"extra": {"max_messages_per_second": RATE}}
    tag = uuid.uuid4().hex[:8]
    data = tmp_path / "data"
    data.mkdir()
    stack = Stack(
        StackConfig(
            home=tmp_path / "home",
            postgres=postgres_server,
            metadata_db=f"wm_stack_meta_{tag}",
            ledger_db=f"wm_stack_ledger_{tag}",
            # A Redis database of its own: the session's shared stack (tests/stack/conftest.py) is up on the
            # test database, and two stacks on one broker database take each other's tasks.
            redis=f"redis://127.0.0.1:6379/{int(os.environ.get('WELCOME_MAILER_TEST_REDIS_DB', '9')) + 2}",
            api_port=free_port(),
            esp_port=free_port(),
            pool_slots=16,
            admin_password=f"pw-{tag}",
            data_roots=str(data),
            dropzone=str(data / "dropzone"),
            extra_env=(("AIRFLOW_CONN_ESP_DEFAULT", json.dumps(connection)),),
        )
    )
    try:
        stack.up(wait=240)
        stack.data = data
        yield stack, esp
    finally:
        stack.down()
        stack.drop_databases()
        esp.stop()


def test_the_rate_holds_across_8_send_tasks_of_2_runs_at_once(limited_stack):
    stack, esp = limited_stack
    paths = []
    for n in range(2):
        path = stack.data / f"rated{n}.csv"
        path.write_text("".join(f"User {i}, rated{n}.user{i}@example.com\n" for i in range(3000)))
        paths.append(path)
    conf = {"max_send_tasks": 8, "min_contacts_per_send_task": 300, "batch_size": 100}

    def run(path):
        run_id = stack.trigger("welcome_emails", {"csv_path": str(path), **conf})
        return stack.wait_for_run("welcome_emails", run_id, timeout=900)

    with ThreadPoolExecutor(2) as pool:
        states = list(pool.map(run, paths))
    assert states == ["success", "success"]
    messages = esp.messages()
    firsts = [m for m in messages if m["idempotency_key"].endswith("-1")]
    assert len({m["to"] for m in firsts}) == len(firsts) == 6000
    every = [datetime.fromisoformat(m["created_at"]).timestamp() for m in messages]  # resends too
    stamps = sorted(datetime.fromisoformat(m["created_at"]).timestamp() for m in firsts)
    reached = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    print(f"stack: busiest second {busiest_window(every)}, reached {reached:.1f}/s of {RATE}/s")
    assert busiest_window(every) <= RATE * 1.1
    assert reached >= RATE * 0.9
    assert esp.client.get("/healthz").json()["throttled"] == 0
