"""The production stack without Docker: CeleryExecutor on Postgres + Redis, as local processes.

    python -m include.local.stack up | down | status        (make stack-up / stack-down / stack-status)

For machines that already run PostgreSQL and Redis. ``up`` creates the metadata and ledger databases if
missing, migrates both (Airflow's schema and the ledger's), and starts api-server, scheduler, dag-processor,
triggerer, a Celery worker and the mock ESP, each in its own process group with a PID file; creates the
``email_provider`` pool; waits until everything reports healthy. ``down`` stops exactly the processes it
started, by PID.

Everything lives under ``.stack/`` in the project: airflow.cfg-free configuration (environment only),
logs (``.stack/logs/<component>.log``, task logs under ``.stack/logs/tasks``), reports, PID files.
Settings come from the environment (defaults in brackets):

| variable | meaning |
|---|---|
| STACK_POSTGRES [postgresql+psycopg2://postgres@127.0.0.1:5432] | server for the metadata and ledger DBs |
| STACK_METADATA_DB [airflow_stack], STACK_LEDGER_DB [contacts_stack] | database names |
| STACK_REDIS [redis://127.0.0.1:6379/5] | Celery broker |
| STACK_API_PORT [28080], STACK_ESP_PORT [28025] | ports on 127.0.0.1 |
| STACK_POOL_SLOTS [8] | ``email_provider`` pool: concurrent calls to the provider |
| STACK_ADMIN_PASSWORD [admin] | password of user ``admin`` (simple auth manager) |
| AIRFLOW_CONN_ESP_DEFAULT, AIRFLOW_CONN_CONTACTS_DB | when set, used instead of the stack's own ESP / ledger |
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from sqlalchemy.engine import make_url

from include.local.net import wait_healthy
from include.local.run_embedded import PROJECT_ROOT, esp_connection, migrate_ledger, project_env

STACK_HOME = PROJECT_ROOT / ".stack"
SHARED_SETTINGS = PROJECT_ROOT / "include" / "local" / "stack" / "airflow.env"
COMPONENTS = ("mock-esp", "api-server", "scheduler", "dag-processor", "triggerer", "worker")
HEALTH_CHECKED = ("scheduler", "triggerer", "dag_processor", "metadatabase")  # by /api/v2/monitor/health


def mock_push_flags(app_url: str, secret: str) -> list[str]:
    """The mock ESP's flags for push mode, where every outcome also reaches the ledger through the plugin
    app's webhook (at ``app_url``: the api-server's /welcome-mailer, or ``python -m welcome_mailer.web``)."""
    # 500 events a post, as Brevo's batched webhooks: with 100, the 1M run's pushes lagged minutes
    # behind the sends (one post at a time, each a ledger transaction)
    return ["--push-url", f"{app_url}/events/mock", "--push-secret", secret, "--push-batch-size", "500"]


def unsubscribe_env(url: str, secret: str) -> dict[str, str]:
    """The settings that put a List-Unsubscribe link to ``url`` in every message, signed with ``secret``
    (the app serving ``url`` reads them too)."""
    return {"WELCOME_MAILER_UNSUBSCRIBE_URL": url, "WELCOME_MAILER_UNSUBSCRIBE_SECRET": secret}


@dataclass(frozen=True)
class StackConfig:
    home: Path
    postgres: str
    metadata_db: str
    ledger_db: str
    redis: str
    api_port: int
    esp_port: int
    pool_slots: int
    admin_password: str
    data_roots: str
    dropzone: str
    dropzone_settle_seconds: float = 10.0
    esp_api_key: str = "stack-esp-key"
    esp_push_secret: str = "stack-push-secret"  # the mock posts its outcome events to the api-server's plugin
    unsubscribe_secret: str = "stack-unsubscribe-secret"  # signs the List-Unsubscribe links of every message
    extra_env: tuple[tuple[str, str], ...] = ()  # more environment for every component (tests: connections)

    @classmethod
    def from_env(cls) -> StackConfig:
        env = os.environ.get
        return cls(
            home=STACK_HOME,
            postgres=env("STACK_POSTGRES", "postgresql+psycopg2://postgres@127.0.0.1:5432"),
            metadata_db=env("STACK_METADATA_DB", "airflow_stack"),
            ledger_db=env("STACK_LEDGER_DB", "contacts_stack"),
            redis=env("STACK_REDIS", "redis://127.0.0.1:6379/5"),
            api_port=int(env("STACK_API_PORT", "28080")),
            esp_port=int(env("STACK_ESP_PORT", "28025")),
            pool_slots=int(env("STACK_POOL_SLOTS", "8")),
            admin_password=env("STACK_ADMIN_PASSWORD", "admin"),
            data_roots=env("WELCOME_MAILER_DATA_ROOTS", str(PROJECT_ROOT)),
            dropzone=env("WELCOME_MAILER_DROPZONE", str(PROJECT_ROOT / "data" / "dropzone")),
        )

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def esp_url(self) -> str:
        return f"http://127.0.0.1:{self.esp_port}"


class Stack:
    def __init__(self, config: StackConfig | None = None) -> None:
        self.config = config or StackConfig.from_env()
        self.logs = self.config.home / "logs"
        self.pids = self.config.home / "pids"

    # -- environment ---------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        c = self.config
        home = c.home
        secret_file = home / "jwt_secret"
        if not secret_file.exists():
            home.mkdir(parents=True, exist_ok=True)
            secret_file.write_text(secrets.token_urlsafe(32))
        erase_key_file = home / "erase_key"  # keys erased contacts' hashes (operator erase, GDPR)
        if not erase_key_file.exists():
            erase_key_file.write_text(secrets.token_urlsafe(32))
        server = make_url(f"{c.postgres}/{c.metadata_db}")
        env = project_env(home)
        env.update(
            {
                **shared_settings(),
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{c.api_url}/execution/",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"{c.postgres}/{c.metadata_db}",
                "AIRFLOW__CELERY__BROKER_URL": c.redis,
                "AIRFLOW__CELERY__RESULT_BACKEND": server.set(drivername="db+postgresql").render_as_string(False),
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(c.api_port),
                "AIRFLOW__API__BASE_URL": c.api_url,
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__API_AUTH__JWT_SECRET": secret_file.read_text(),
                "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.logs / "tasks"),
                "WELCOME_MAILER_REPORTS_DIR": str(home / "reports"),
            }
        )
        env["WELCOME_MAILER_DATA_ROOTS"] = c.data_roots
        env["WELCOME_MAILER_DROPZONE"] = c.dropzone
        env["WELCOME_MAILER_DROPZONE_SETTLE_SECONDS"] = str(c.dropzone_settle_seconds)
        for name, value in unsubscribe_env(f"{c.api_url}/welcome-mailer/unsubscribe", c.unsubscribe_secret).items():
            env.setdefault(name, value)
        env.setdefault("AIRFLOW_CONN_ESP_DEFAULT", esp_connection(c.esp_port, c.esp_api_key))
        if self.runs_the_mock(env):  # the mock's event endpoint only where the mock posts to it
            env.setdefault("WELCOME_MAILER_MOCK_WEBHOOK_SECRET", c.esp_push_secret)
        env.setdefault("WELCOME_MAILER_ERASE_KEY", erase_key_file.read_text())
        ledger = {"conn_type": "postgres", "host": server.host, "port": server.port or 5432,
                  "login": server.username, "password": server.password, "schema": c.ledger_db}  # fmt: skip
        env.setdefault("AIRFLOW_CONN_CONTACTS_DB", json.dumps(ledger))
        env.update(c.extra_env)
        return env

    def runs_the_mock(self, env: dict[str, str]) -> bool:
        """Whether the provider is this stack's mock ESP (unless the user set their own)."""
        return env["AIRFLOW_CONN_ESP_DEFAULT"] == esp_connection(self.config.esp_port, self.config.esp_api_key)

    def _commands(self) -> dict[str, list[str]]:
        airflow = str(Path(sys.executable).with_name("airflow"))
        c = self.config
        return {
            "mock-esp": [
                sys.executable,
                "-m",
                "include.mocks.esp",
                "--port",
                str(c.esp_port),
                "--api-key",
                c.esp_api_key,
                *mock_push_flags(f"{c.api_url}/welcome-mailer", c.esp_push_secret),
            ],
            "api-server": [airflow, "api-server", "--port", str(c.api_port), "--host", "127.0.0.1"],
            "scheduler": [airflow, "scheduler"],
            "dag-processor": [airflow, "dag-processor"],
            "triggerer": [airflow, "triggerer"],
            "worker": [airflow, "celery", "worker"],  # concurrency: include/local/stack/airflow.env
        }

    # -- lifecycle -----------------------------------------------------------------------------
    def up(self, wait: float = 180) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.pids.mkdir(parents=True, exist_ok=True)
        env = self.env()
        self.prepare_databases()
        (self.config.home / "passwords.json").write_text(json.dumps({"admin": self.config.admin_password}))
        print("migrating the metadata database ...", flush=True)
        self._airflow(env, "db", "migrate")
        print("migrating the ledger ...", flush=True)
        migrate_ledger(env)
        for component in COMPONENTS:
            if component == "mock-esp" and not self.runs_the_mock(env):
                continue  # the user's own ESP
            self.start(component, env)
        self._airflow(env, "pools", "set", "email_provider", str(self.config.pool_slots), "Concurrent calls to the ESP")
        self.wait_healthy(wait)
        print(f"stack up: {self.config.api_url} (admin / {self.config.admin_password}); logs in {self.logs}")

    def start(self, component: str, env: dict[str, str] | None = None) -> int:
        if self.pid(component):
            return self.pid(component)
        env = env or self.env()
        with (self.logs / f"{component}.log").open("a") as log:
            # Where this start's output begins in the (appended) log: readiness is looked for after it.
            (self.pids / f"{component}.log_offset").write_text(str(log.tell()))
            process = subprocess.Popen(
                self._commands()[component],
                cwd=PROJECT_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopping it stops its children
            )
        (self.pids / f"{component}.pid").write_text(str(process.pid))
        return process.pid

    def stop(self, component: str, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        pid = self.pid(component)
        pid_file = self.pids / f"{component}.pid"
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, sig)
            deadline = time.monotonic() + timeout
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _alive(pid):
                os.killpg(pid, signal.SIGKILL)
        pid_file.unlink(missing_ok=True)

    def down(self) -> None:
        for component in reversed(COMPONENTS):
            self.stop(component)
        print("stack down")

    def pid(self, component: str) -> int | None:
        pid_file = self.pids / f"{component}.pid"
        if not pid_file.exists():
            return None
        pid = int(pid_file.read_text())
        return pid if _alive(pid) else None

    # -- health --------------------------------------------------------------------------------
    def health(self) -> dict:
        try:
            return httpx.get(f"{self.config.api_url}/api/v2/monitor/health", timeout=5).json()
        except (httpx.HTTPError, ValueError) as exc:
            return {"error": repr(exc)}

    def status(self) -> dict:
        health = self.health()
        report = {component: ("running" if self.pid(component) else "stopped") for component in COMPONENTS}
        for component in HEALTH_CHECKED:
            report[f"health.{component}"] = health.get(component, {}).get("status", "unknown")
        return report

    def wait_healthy(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        if self.pid("mock-esp"):
            wait_healthy(f"{self.config.esp_url}/healthz", timeout=timeout)
        while time.monotonic() < deadline:
            status = self.status()
            stopped = [c for c in COMPONENTS if status[c] == "stopped" and c != "mock-esp"]
            if stopped:
                raise RuntimeError(f"stack components exited: {stopped}; see {self.logs}")
            healthy = all(status[f"health.{c}"] == "healthy" for c in HEALTH_CHECKED)
            if healthy and self.execution_api_ready() and self.worker_ready() and self.dag_visible("welcome_emails"):
                return
            time.sleep(1)
        raise RuntimeError(f"stack not healthy after {timeout}s: {self.status()}; see {self.logs}")

    def execution_api_ready(self) -> bool:
        """The API the workers' tasks call answers. The api-server builds it on its first request (seconds of
        CPU, measured 4.3 s): asking here keeps that out of the first run's first task."""
        try:
            return httpx.get(f"{self.config.api_url}/execution/health", timeout=60).status_code == 200
        except httpx.HTTPError:
            return False

    def worker_ready(self) -> bool:
        """Celery logged " ready." since the worker was last started (its task logs may follow it)."""
        log, offset_file = self.logs / "worker.log", self.pids / "worker.log_offset"
        if not log.exists():
            return False
        offset = int(offset_file.read_text()) if offset_file.exists() else 0
        with log.open("rb") as handle:
            handle.seek(offset)
            return b" ready." in handle.read()

    def dag_visible(self, dag_id: str) -> bool:
        try:
            return self.api("GET", f"/api/v2/dags/{dag_id}").status_code == 200
        except httpx.HTTPError:
            return False

    # -- REST API v2 ---------------------------------------------------------------------------
    def token(self) -> str:
        response = httpx.post(
            f"{self.config.api_url}/auth/token",
            json={"username": "admin", "password": self.config.admin_password},
            timeout=10,
        )
        response.raise_for_status()
        return response.json()["access_token"]

    def api(self, method: str, path: str, **kwargs) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token()}"}
        return httpx.request(method, f"{self.config.api_url}{path}", headers=headers, timeout=30, **kwargs)

    def trigger(self, dag_id: str, conf: dict) -> str:
        from datetime import UTC, datetime

        body = {"logical_date": datetime.now(UTC).isoformat(), "conf": conf}
        response = self.api("POST", f"/api/v2/dags/{dag_id}/dagRuns", json=body)
        response.raise_for_status()
        return response.json()["dag_run_id"]

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 600) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}").json()["state"]
            if state in ("success", "failed"):
                return state
            time.sleep(1)
        raise TimeoutError(f"{dag_id} {run_id} not finished after {timeout}s")

    # -- helpers -------------------------------------------------------------------------------
    def _airflow(self, env: dict[str, str], *args: str) -> None:
        airflow = str(Path(sys.executable).with_name("airflow"))
        with (self.logs / "setup.log").open("a") as log:
            subprocess.run(
                [airflow, *args], env=env, cwd=PROJECT_ROOT, check=True, stdout=log, stderr=subprocess.STDOUT
            )

    def drop_databases(self) -> None:
        """Remove the stack's databases (tests; a user's `down` keeps them)."""
        from sqlalchemy import create_engine, text

        engine = create_engine(f"{self.config.postgres}/postgres", isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            for name in (self.config.metadata_db, self.config.ledger_db):
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()

    def _create_databases(self) -> bool:
        """Create the metadata and ledger databases that do not exist. Returns whether the metadata
        database is new."""
        from sqlalchemy import create_engine, text

        engine = create_engine(f"{self.config.postgres}/postgres", isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            existing = set(conn.execute(text("SELECT datname FROM pg_database")).scalars())
            for name in (self.config.metadata_db, self.config.ledger_db):
                if name not in existing:
                    conn.execute(text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        return self.config.metadata_db not in existing

    def prepare_databases(self) -> None:
        """The databases ``up`` needs; on a new metadata database, an empty broker too: task messages
        left in the broker's Redis database by an earlier stack (killed mid-run) name task instances this
        one does not have, and its workers failed them ("Invalid auth token") while the scheduler waited
        ~10 min to queue its own again. A stack restarted on its metadata database keeps its queue."""
        if self._create_databases():
            self._empty_broker()

    def _empty_broker(self) -> int:
        """Drop what the broker's Redis database holds. Returns how many keys were dropped."""
        import redis

        broker = redis.Redis.from_url(self.config.redis)
        try:
            left = broker.dbsize()
            if left:
                broker.flushdb()
                print(f"emptied the broker's Redis database: {left} keys left by an earlier stack", flush=True)
            return left
        finally:
            broker.close()


def shared_settings(path: Path = SHARED_SETTINGS) -> dict[str, str]:
    """The settings both deployments use (an env file: KEY=value lines, # comments)."""
    settings = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    return settings


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours is not alive
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def main(argv: list[str] | None = None) -> int:
    command = (argv or sys.argv[1:] or ["status"])[0]
    stack = Stack()
    if command == "up":
        stack.up()
    elif command == "down":
        stack.down()
    elif command == "status":
        status = stack.status()
        width = max(len(k) for k in status)
        for key, value in status.items():
            print(f"{key:<{width}}  {value}")
        return 0 if all(v in ("running", "healthy") for v in status.values()) else 1
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
