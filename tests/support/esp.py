"""The mock ESP as a process for the tests, and the reads of its audit log the tests prove things with."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from include.local.net import free_port, wait_healthy
from tests.support import PROJECT_ROOT

API_KEY = "test-key"


def read_message_log(client: httpx.Client, **filters) -> list[dict]:
    """An ESP's whole message log, in acceptance order, paged with the cursor; retries the faults a test
    may have switched on (503, 429) for a bounded time."""
    found, cursor = [], None
    deadline = time.monotonic() + 60
    while True:
        params = {"limit": 1000, **filters, **({"cursor": cursor} if cursor else {})}
        response = client.get("/v1/messages", params=params)
        if response.status_code in (429, 503) and time.monotonic() < deadline:
            time.sleep(0.05)
            continue
        page = response.raise_for_status().json()
        found.extend(page["messages"])
        cursor = page["next_cursor"]
        if cursor is None:
            return found


@dataclass
class RunningEsp:
    """A mock ESP process, and the audit-log reads the tests prove things with."""

    url: str
    api_key: str
    process: subprocess.Popen
    log_path: Path
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.api_key}"})

    @property
    def connection(self) -> dict:
        host, port = self.url.removeprefix("http://").split(":")
        return {"conn_type": "http", "host": host, "port": int(port), "password": self.api_key}

    def messages(self, **filters) -> list[dict]:
        return read_message_log(self.client, **filters)

    def stop(self) -> None:
        self.client.close()
        self.process.terminate()
        self.process.wait(timeout=10)


def launch_esp(log_dir: Path, **flags) -> RunningEsp:
    """Start a mock ESP process with the given flags (``hold_rate=0`` -> ``--hold-rate 0``)."""
    port = free_port()
    args = [sys.executable, "-m", "include.mocks.esp", "--port", str(port), "--api-key", API_KEY]
    for name, value in flags.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    log_path = log_dir / f"mock_esp_{port}.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(args, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT)
    esp = RunningEsp(f"http://127.0.0.1:{port}", API_KEY, process, log_path)
    wait_healthy(f"{esp.url}/healthz", process)
    return esp
