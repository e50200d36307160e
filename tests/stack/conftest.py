"""One local Celery stack for every test under tests/stack (starting one takes ~30 s)."""

from __future__ import annotations

import os
import uuid

import httpx
import pytest

from include.local.net import free_port
from include.local.stack import Stack, StackConfig

S3_ROOT = "s3://wm-stack/incoming"  # a data root on the local S3 API (tests/support/s3.py), beside the local one


def _redis_available() -> bool:
    import redis

    try:
        return bool(redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=2).ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="session")
def stack(postgres_server, tmp_path_factory, s3_server):
    if not _redis_available():
        if os.environ.get("CI") == "true":
            pytest.fail("Redis not reachable at 127.0.0.1:6379 (required under CI=true)")
        pytest.skip("Redis not reachable at 127.0.0.1:6379")
    tag = uuid.uuid4().hex[:8]
    data = tmp_path_factory.mktemp("stack-data")
    stack = Stack(
        StackConfig(
            home=tmp_path_factory.mktemp("stack-home"),
            postgres=postgres_server,
            metadata_db=f"wm_stack_meta_{tag}",
            ledger_db=f"wm_stack_ledger_{tag}",
            # Its own Redis database: two stacks on one broker database would take each other's tasks.
            redis=f"redis://127.0.0.1:6379/{os.environ.get('WELCOME_MAILER_TEST_REDIS_DB', '9')}",
            api_port=free_port(),
            esp_port=free_port(),
            pool_slots=8,
            admin_password=f"pw-{tag}",
            data_roots=f"{data}:{S3_ROOT}",
            dropzone=str(data / "dropzone"),
            dropzone_settle_seconds=2,
            # aws_default: the local S3 API; the templates folder: the test's own (tests/stack/test_templates_stack.py)
            extra_env=(*s3_server.connection_env().items(), ("WELCOME_MAILER_TEMPLATES_DIR", str(data / "templates"))),
        )
    )
    try:
        stack.up(wait=240)
        stack.data = data
        stack.s3 = s3_server
        stack.esp = httpx.Client(
            base_url=stack.config.esp_url, headers={"Authorization": f"Bearer {stack.config.esp_api_key}"}
        )
        yield stack
    finally:
        stack.down()
        stack.drop_databases()
