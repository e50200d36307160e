"""The local stack's worker readiness: only what the worker logged since its last start counts."""

from __future__ import annotations

import dataclasses
import sys
import time

from include.local.stack import Stack, StackConfig


def _started_worker(tmp_path, monkeypatch, output: str, earlier_log: str) -> Stack:
    stack = Stack(dataclasses.replace(StackConfig.from_env(), home=tmp_path))
    stack.logs.mkdir(parents=True)
    stack.pids.mkdir(parents=True)
    (stack.logs / "worker.log").write_text(earlier_log)
    monkeypatch.setattr(stack, "_commands", lambda: {"worker": [sys.executable, "-c", f"print({output!r})"]})
    pid = stack.start("worker")
    deadline = time.monotonic() + 20
    while stack.pid("worker") == pid and time.monotonic() < deadline:
        time.sleep(0.05)
    return stack


def test_a_previous_start_readiness_does_not_count(tmp_path, monkeypatch):
    assert not _started_worker(tmp_path, monkeypatch, "booting", "celery@old ready.\n").worker_ready()


def test_readiness_is_found_however_much_the_worker_logged_before(tmp_path, monkeypatch):
    stack = _started_worker(tmp_path, monkeypatch, "celery@new ready.", "task line\n" * 3000)
    with (stack.logs / "worker.log").open("a") as log:
        log.write("task line\n" * 3000)  # the dropzone's task logs push it far from the end
    assert stack.worker_ready()
