"""airflow-init's script, run for real by bash with the container's commands stubbed.

The script is taken from docker-compose.yaml as compose resolves it, /opt/airflow becomes a temporary
directory, and `airflow`, `welcome-mailer`, `psql` and `chown` are fake executables on PATH that record
their arguments and fail on demand (STUB_FAIL: the command line prefix to fail on); so is the image's
`/entrypoint`. The database steps also run for real, with psql, against the local Postgres.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy.compose import COMPOSE_FILE, MissingVariable, docker_env, load
from tests.support import PROJECT_ROOT

STUB = """#!/usr/bin/env bash
name=$(basename "$0")
printf '%s\\n' "$name $*" >>"$STUB_LOG"
if [[ -n "${STUB_FAIL:-}" && "$name $*" == "$STUB_FAIL"* ]]; then
    echo "$name: failing on purpose" >&2
    exit 3
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


def run_init(
    tmp_path: Path, compose_env: dict[str, str], real: tuple[str, ...] = (), overrides: dict | None = None, **stub_env
) -> InitRun:
    """airflow-init's script with the commands in STUBBED faked, except those in ``real``; ``overrides``
    replace variables of the container's environment."""
    service = load(COMPOSE_FILE.read_text(), compose_env)["services"]["airflow-init"]
    assert service["entrypoint"] == "/bin/bash" and service["command"][0] == "-c"
    root = tmp_path / "opt-airflow"
    (root / "examples").mkdir(parents=True, exist_ok=True)
    (root / "examples" / "input.csv").write_bytes((PROJECT_ROOT / "input.csv").read_bytes())
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in set(STUBBED) - set(real):
        (bin_dir / name).write_text(STUB)
        (bin_dir / name).chmod(0o755)
    (bin_dir / "entrypoint").write_text(ENTRYPOINT)
    (bin_dir / "entrypoint").chmod(0o755)
    if not (bin_dir / "python").exists():
        (bin_dir / "python").symlink_to(sys.executable)  # the image's python
    log = tmp_path / "calls.log"
    log.write_text("")
    environment = {key: str(value).replace("/opt/airflow", str(root)) for key, value in service["environment"].items()}
    environment.update(overrides or {})
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
    process = subprocess.run(
        ["bash", "-c", script], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60
    )
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


@pytest.fixture
def ledger_role(postgres_server):
    """A role and database name for the ledger on the local Postgres, dropped afterwards (roles are global)."""
    from sqlalchemy import create_engine, text

    tag = uuid.uuid4().hex[:8]
    names = (f"wm_init_role_{tag}", f"wm_init_ledger_{tag}")
    yield names
    engine = create_engine(f"{postgres_server}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{names[1]}" WITH (FORCE)'))
        conn.execute(text(f'DROP ROLE IF EXISTS "{names[0]}"'))
    engine.dispose()


@pytest.mark.postgres
def test_init_gives_the_ledger_its_own_role_and_database_on_postgres(tmp_path, user_env, postgres_server, ledger_role):
    """The database steps for real: psql against the local Postgres, as the superuser the metadata uses."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    role, database = ledger_role
    admin = make_url(f"{postgres_server}/postgres")

    def init(password: str) -> InitRun:
        ledger = {"conn_type": "postgres", "host": admin.host, "port": admin.port or 5432, "login": role,
                  "password": password, "schema": database}  # fmt: skip
        overrides = {
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": admin.render_as_string(hide_password=False),
            "AIRFLOW_CONN_CONTACTS_DB": json.dumps(ledger),
        }
        run = run_init(tmp_path / password, user_env, real=("psql",), overrides=overrides)
        assert run.returncode == 0, run.output
        return run

    def as_ledger(password: str, sql: str):
        url = admin.set(username=role, password=password, database=database)
        engine = create_engine(url)
        try:
            with engine.begin() as conn:
                result = conn.execute(text(sql))
                return result.all() if result.returns_rows else []
        finally:
            engine.dispose()

    init("first-password")
    assert as_ledger("first-password", "SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user") == [
        (role, False)
    ], "the ledger's own login, not a superuser"
    # A ledger an earlier version made as the superuser: its tables are handed over to the role.
    superuser = create_engine(admin.set(database=database))
    with superuser.begin() as conn:
        conn.execute(text("CREATE TABLE old_ledger_table (email text PRIMARY KEY)"))
    superuser.dispose()
    init("second-password")  # again, on the same Postgres, with a new password in .env
    owners = as_ledger("second-password", "SELECT tableowner FROM pg_tables WHERE tablename = 'old_ledger_table'")
    assert owners == [(role,)]
    as_ledger("second-password", "CREATE TABLE migrated_by_the_role (id int)")  # the role owns the database


def test_compose_refuses_to_start_without_airflow_uid(user_env):
    for env in ({k: v for k, v in user_env.items() if k != "AIRFLOW_UID"}, {**user_env, "AIRFLOW_UID": ""}):
        with pytest.raises(MissingVariable, match="AIRFLOW_UID"):
            load(COMPOSE_FILE.read_text(), env)


def test_init_says_so_when_airflow_uid_is_0(tmp_path, user_env):
    run = run_init(tmp_path, {**user_env, "AIRFLOW_UID": "0"})
    assert run.returncode == 0, run.output
    assert "AIRFLOW_UID is 0" in run.output and 'AIRFLOW_UID=$(id -u)/" .env' in run.output
    assert any(call.startswith("chown -R 0:0 ") for call in run.calls)
    quiet = run_init(tmp_path / "with-uid", {**user_env, "AIRFLOW_UID": "1000"})
    assert "AIRFLOW_UID is 0" not in quiet.output


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
