"""airflow-init's script, run for real by bash with the container's commands stubbed.

The script is taken from docker-compose.yaml as compose resolves it, /opt/airflow becomes a temporary
directory, and `airflow`, `welcome-mailer`, `psql` and `chown` are fake executables on PATH that record
their arguments and fail on demand (STUB_FAIL: the command line prefix to fail on); so is the image's
`/entrypoint`.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy.compose import COMPOSE_FILE, docker_env, load
from tests.support import PROJECT_ROOT

STUB = """#!/usr/bin/env bash
name=$(basename "$0")
printf '%s\\n' "$name $*" >>"$STUB_LOG"
if [[ -n "${STUB_FAIL:-}" && "$name $*" == "$STUB_FAIL"* ]]; then
    echo "$name: failing on purpose" >&2
    exit 3
fi
if [[ $name == psql && "$*" == *"FROM pg_database"* && -n "${STUB_CONTACTS_EXISTS:-}" ]]; then
    echo 1
fi
"""
STUBBED = ("airflow", "welcome-mailer", "psql", "chown")
# The image's /entrypoint, as far as init is concerned: it migrates when _AIRFLOW_DB_MIGRATE is true, then
# runs its arguments.
ENTRYPOINT = """#!/usr/bin/env bash
if [[ "${_AIRFLOW_DB_MIGRATE:-}" == "true" ]]; then airflow db migrate; fi
exec "$@"
"""


@dataclass
class InitRun:
    returncode: int
    output: str
    calls: list[str]
    root: Path  # what the container sees as /opt/airflow
    environment: dict[str, str]

    def index(self, prefix: str) -> int:
        return next(i for i, call in enumerate(self.calls) if call.startswith(prefix))


@pytest.fixture(scope="module")
def user_env(tmp_path_factory) -> dict[str, str]:
    return docker_env(tmp_path_factory.mktemp("project") / ".env")


def run_init(tmp_path: Path, compose_env: dict[str, str], **stub_env: str) -> InitRun:
    service = load(COMPOSE_FILE.read_text(), compose_env)["services"]["airflow-init"]
    assert service["entrypoint"] == "/bin/bash" and service["command"][0] == "-c"
    root = tmp_path / "opt-airflow"
    (root / "examples").mkdir(parents=True, exist_ok=True)
    (root / "examples" / "input.csv").write_bytes((PROJECT_ROOT / "input.csv").read_bytes())
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in STUBBED:
        (bin_dir / name).write_text(STUB)
        (bin_dir / name).chmod(0o755)
    (bin_dir / "entrypoint").write_text(ENTRYPOINT)
    (bin_dir / "entrypoint").chmod(0o755)
    if not (bin_dir / "python").exists():
        (bin_dir / "python").symlink_to(sys.executable)  # the image's python
    log = tmp_path / "calls.log"
    log.write_text("")
    environment = {key: str(value).replace("/opt/airflow", str(root)) for key, value in service["environment"].items()}
    env = {
        **environment,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "STUB_LOG": str(log),
        **stub_env,
    }
    script = (
        service["command"][1].replace("/opt/airflow", str(root)).replace("/entrypoint", str(bin_dir / "entrypoint"))
    )
    process = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    return InitRun(process.returncode, process.stdout + process.stderr, log.read_text().splitlines(), root, environment)


def test_init_runs_every_step_once(tmp_path, user_env):
    run = run_init(tmp_path, user_env)
    assert run.returncode == 0, run.output
    assert run.calls.count("airflow db migrate") == 1, run.calls
    assert "_AIRFLOW_DB_MIGRATE" not in run.environment, "the image's entrypoint would migrate again"
    assert "welcome-mailer db migrate" in run.calls
    assert "airflow pools set email_provider 8 Concurrent calls to the ESP" in run.calls
    assert run.index("airflow db migrate") < run.index("welcome-mailer db migrate")


def test_init_writes_the_admin_password_where_the_api_server_reads_it(tmp_path, user_env):
    password = 'se"cr\\et $HOME'
    run = run_init(tmp_path, {**user_env, "AIRFLOW_ADMIN_PASSWORD": password})
    assert run.returncode == 0, run.output
    passwords = Path(run.environment["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
    assert json.loads(passwords.read_text()) == {"admin": password}
    assert stat.S_IMODE(passwords.stat().st_mode) == 0o600
    owner = f"{user_env['AIRFLOW_UID']}:0"
    chowned = next(call for call in run.calls if call.startswith("chown"))
    assert chowned.startswith(f"chown -R {owner} ") and str(passwords.parent) in chowned.split()
    assert run.index("chown") < run.index("airflow db migrate")


@pytest.mark.parametrize(
    "failing",
    ["chown", "psql", "airflow db migrate", "welcome-mailer db migrate", "airflow pools set"],
)
def test_init_fails_when_any_step_fails(tmp_path, user_env, failing):
    run = run_init(tmp_path, user_env, STUB_FAIL=failing)
    assert run.returncode != 0, f"init succeeded although {failing!r} failed: {run.calls}"
    assert "airflow version" not in run.calls, "nothing runs after the failed step"


def test_init_creates_the_contacts_database_when_missing(tmp_path, user_env):
    run = run_init(tmp_path, user_env)
    assert run.returncode == 0, run.output
    created = run.index("psql") + 1
    assert "CREATE DATABASE contacts" in run.calls[created]
    assert created < run.index("welcome-mailer db migrate"), "the ledger is migrated in a database that exists"


def test_init_leaves_an_existing_contacts_database_alone(tmp_path, user_env):
    run = run_init(tmp_path, user_env, STUB_CONTACTS_EXISTS="1")
    assert run.returncode == 0, run.output
    assert not [call for call in run.calls if "CREATE DATABASE" in call]


def test_init_warns_when_airflow_uid_is_unset(tmp_path, user_env):
    run = run_init(tmp_path, {k: v for k, v in user_env.items() if k != "AIRFLOW_UID"})
    assert run.returncode == 0, run.output
    assert "AIRFLOW_UID not set" in run.output and 'echo "AIRFLOW_UID=$(id -u)" > .env' in run.output
    assert any(call.startswith("chown -R 50000:0 ") for call in run.calls)
    quiet = run_init(tmp_path / "with-uid", user_env)
    assert "AIRFLOW_UID not set" not in quiet.output


def test_init_ships_input_csv_into_the_first_data_root_and_keeps_a_users_file(tmp_path, user_env):
    run = run_init(tmp_path, user_env)
    assert run.returncode == 0, run.output
    first_root = Path(run.environment["WELCOME_MAILER_DATA_ROOTS"].split(":")[0])
    assert (first_root / "input.csv").read_bytes() == (PROJECT_ROOT / "input.csv").read_bytes()
    (first_root / "input.csv").write_text("name,email\n")
    run_init(tmp_path, user_env)
    assert (first_root / "input.csv").read_text() == "name,email\n"
    for directory in ("reports", "dropzone/incoming"):
        assert (first_root / directory).is_dir()
