"""The local stack empties its broker's Redis database when it starts on a new metadata database."""

from __future__ import annotations

import dataclasses
import os
import uuid

import pytest
from sqlalchemy import create_engine, text

from include.local.stack import Stack, StackConfig

# Its own broker database: the stack tests use 9 (the limits stack 11), the bench 10, `make stack-up` 5.
TEST_REDIS = "redis://127.0.0.1:6379/12"


@pytest.fixture
def broker():
    import redis

    client = redis.Redis.from_url(TEST_REDIS, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError:
        client.close()
        if os.environ.get("CI") == "true":
            pytest.fail("Redis not reachable at 127.0.0.1:6379 (required under CI=true)")
        pytest.skip("Redis not reachable at 127.0.0.1:6379")
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def test_a_new_metadata_database_empties_the_broker_and_a_kept_one_does_not(postgres_server, tmp_path, broker):
    tag = uuid.uuid4().hex[:8]
    config = dataclasses.replace(
        StackConfig.from_env(),
        home=tmp_path,
        postgres=postgres_server,
        metadata_db=f"wm_broker_meta_{tag}",
        ledger_db=f"wm_broker_ledger_{tag}",
        redis=TEST_REDIS,
    )
    stack = Stack(config)
    try:
        broker.set("unacked", "a task message of an earlier stack")
        stack.prepare_databases()
        assert broker.dbsize() == 0, "a new metadata database: the earlier stack's messages are dropped"
        broker.set("unacked", "a task message of this stack, restarted")
        stack.prepare_databases()
        assert broker.get("unacked") is not None, "a kept metadata database keeps its queued tasks"
    finally:
        admin = create_engine(f"{postgres_server}/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            for name in (config.metadata_db, config.ledger_db):
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
