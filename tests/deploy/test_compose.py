"""docker-compose.yaml: valid against the Compose Specification, the same stack as `make stack-up`, and
none of the defects a user would meet on the first `docker compose up` (issue #13).

There is no Docker engine here, so the file is resolved the way `docker compose config` does it
(tests/deploy/compose.py), with the .env `make docker-env` writes, then checked against the specification.
"""

from __future__ import annotations

import ast
import json
import os
import re
import stat

import compose_spec
import pytest
from cryptography.fernet import Fernet

from include.local.stack import SHARED_SETTINGS, Stack, shared_settings
from tests.deploy.compose import COMPOSE_FILE, MissingVariable, docker_env, load, read_env_file
from tests.support import PROJECT_ROOT

SECRETS = ("AIRFLOW_JWT_SECRET", "AIRFLOW_FERNET_KEY", "AIRFLOW_ADMIN_PASSWORD")


@pytest.fixture(scope="module")
def user_env(tmp_path_factory) -> dict[str, str]:
    """The .env of a user who followed the README."""
    return docker_env(tmp_path_factory.mktemp("project") / ".env")


def validate(text: str, env: dict[str, str]) -> None:
    compose_spec.PyCompose.from_json(json.dumps(load(text, env))).validate()


@pytest.fixture(scope="module")
def compose(user_env) -> dict:
    return load(COMPOSE_FILE.read_text(), user_env)


def airflow_services(compose: dict) -> dict[str, dict]:
    return {name: s for name, s in compose["services"].items() if name.startswith("airflow-") or name == "flower"}


def connection(value: str):
    from airflow.models.connection import Connection

    if value.lstrip().startswith("{"):
        return Connection.from_json(value, conn_id="test")
    return Connection(conn_id="test", uri=value)


def test_compose_file_is_valid(user_env):
    validate(COMPOSE_FILE.read_text(), user_env)


@pytest.mark.parametrize(
    ("original", "broken"),
    [
        ("restart: always", "restart: sometimes"),
        ('"127.0.0.1:8080:8080"', '"127.0.0.1:80a80:8080"'),
        ("start_period: 5s", "start_perod: 5s"),
        ("required: false", "required: perhaps"),
    ],
)
def test_the_validator_catches_mistakes(original, broken, user_env):
    text = COMPOSE_FILE.read_text()
    assert original in text
    with pytest.raises(ValueError):
        validate(text.replace(original, broken, 1), user_env)


def test_official_shape_plus_the_mock_esp(compose):
    services = set(compose["services"])
    assert services == {
        "postgres", "redis", "airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
        "airflow-triggerer", "airflow-worker", "airflow-cli", "flower", "mock-esp", "log-groomer",
    }  # fmt: skip
    assert compose["services"]["flower"]["profiles"] == ["flower"]
    assert compose["services"]["airflow-cli"]["profiles"] == ["debug"], "the official debug profile"
    assert "x-airflow-common" in compose
    worker = compose["services"]["airflow-worker"]
    assert worker["command"] == "celery worker" and "container_name" not in worker, "must scale with --scale"


def test_postgres_health_check_and_one_image_as_upstream(compose):
    services = compose["services"]
    assert services["postgres"]["image"] == "postgres:16"
    api_check = " ".join(services["airflow-apiserver"]["healthcheck"]["test"])
    assert "curl --fail http://localhost:8080/api/v2/monitor/health" in api_check
    assert "curl --fail http://localhost:8080/execution/health" in api_check, "the workers' API answers"
    builders = [name for name, service in services.items() if "build" in service]
    assert builders == ["airflow-init"], "the image is built once"
    image = services["airflow-init"]["image"]
    users = {name for name, service in services.items() if service.get("image") == image}
    assert users == set(airflow_services(compose)) | {"mock-esp", "log-groomer"}, "all run the tag init builds"


def test_airflow_services_mount_the_project(compose):
    for service in airflow_services(compose).values():
        targets = {volume.split(":")[1] for volume in service["volumes"]}
        assert {"/opt/airflow/dags", "/opt/airflow/plugins", "/opt/airflow/include", "/opt/airflow/data"} <= targets


def test_compose_and_the_local_stack_share_their_settings(compose):
    local = Stack().env()
    shared = shared_settings()
    for name, service in airflow_services(compose).items():
        assert service["env_file"] == [str(SHARED_SETTINGS.relative_to(PROJECT_ROOT))], name
        overridden = set(shared) & set(service["environment"])
        assert not overridden, f"{name} overrides shared settings {overridden}"
    assert all(local[key] == value for key, value in shared.items()), "the local stack applies the shared file"
    assert shared["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"


def test_both_stacks_wire_the_same_connections_pool_and_image(compose):
    environment = compose["x-airflow-common"]["environment"]
    esp = connection(environment["AIRFLOW_CONN_ESP_DEFAULT"])
    ledger = connection(environment["AIRFLOW_CONN_CONTACTS_DB"])
    assert (esp.conn_type, esp.host) == ("http", "mock-esp")
    assert (ledger.conn_type, ledger.schema) == ("postgres", "contacts")
    local = Stack().env()
    assert json.loads(local["AIRFLOW_CONN_ESP_DEFAULT"])["conn_type"] == "http"
    assert json.loads(local["AIRFLOW_CONN_CONTACTS_DB"])["conn_type"] == "postgres"
    init_script = "\n".join(compose["services"]["airflow-init"]["command"])
    assert "airflow pools set email_provider" in init_script
    dockerfile = (PROJECT_ROOT / "Dockerfile").read_text()
    airflow_pin = next(
        line
        for line in (PROJECT_ROOT / "requirements.txt").read_text().splitlines()
        if line.startswith("apache-airflow==")
    )
    assert f"FROM apache/airflow:{airflow_pin.split('==')[1]}-python3.11" in dockerfile
    assert "-r /opt/welcome-mailer/requirements.txt" in dockerfile


# -- 1. the admin login ------------------------------------------------------------------------------
def test_the_passwords_file_is_on_a_volume_mounted_only_where_it_is_written_and_read(compose):
    variable = "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"
    assert variable in Stack().env(), "the variable the local stack uses"
    services = compose["services"]
    readers = {name for name, service in services.items() if variable in service.get("environment", {})}
    assert readers == {"airflow-init", "airflow-apiserver"}, "init writes it, the api-server reads it"
    for name in readers:
        path = services[name]["environment"][variable]
        mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in services[name]["volumes"]}
        directory = os.path.dirname(path)
        assert directory in mounts, f"{name}: {path} is not on a volume, so it is gone when init exits"
        source = mounts[directory]
        assert source in compose["volumes"] or source.startswith("./"), f"{name}: {source} is not persistent"
    auth = {
        name
        for name, service in services.items()
        if any(v.startswith("airflow-auth:") for v in service.get("volumes", []))
    }
    assert auth == readers, "no other container can read the admin password"
    assert services["airflow-apiserver"]["volumes"][-1].endswith(":ro"), "the api-server only reads it"


# -- 3. the host user owns ./data; secrets in .env -------------------------------------------------------
def test_env_example_documents_every_variable_the_file_reads_and_env_is_ignored():
    example = read_env_file(PROJECT_ROOT / ".env.example")
    read = set(re.findall(r"(?<!\$)\$\{(\w+)", COMPOSE_FILE.read_text()))  # not $${...}: the shell's
    assert read <= set(example) | {"AIRFLOW_CONN_ESP_DEFAULT", "AIRFLOW_CONN_BOUNCE_MAILBOX"}, read - set(example)
    example_text = (PROJECT_ROOT / ".env.example").read_text()
    assert "AIRFLOW_CONN_ESP_DEFAULT" in example_text and "AIRFLOW_CONN_BOUNCE_MAILBOX" in example_text
    assert all(example[name] == "" for name in SECRETS), ".env.example ships no secret"
    assert ".env" in (PROJECT_ROOT / ".gitignore").read_text().splitlines()


def test_docker_env_writes_the_users_uid_and_fresh_strong_secrets(tmp_path, user_env):
    env = docker_env(tmp_path / ".env")
    assert env["AIRFLOW_UID"] == str(os.getuid())
    Fernet(env["AIRFLOW_FERNET_KEY"].encode())  # raises on an invalid key
    assert len(env["AIRFLOW_JWT_SECRET"]) >= 32 and len(env["AIRFLOW_ADMIN_PASSWORD"]) >= 16
    assert all(env[name] != user_env[name] for name in SECRETS), "each .env gets its own secrets"
    assert env["COMPOSE_PROFILES"] == "mock-esp", "no provider set: the mock runs"
    assert stat.S_IMODE((tmp_path / ".env").stat().st_mode) == 0o600


def test_docker_env_keeps_what_is_there_and_fills_a_copied_example(tmp_path):
    first = docker_env(tmp_path / ".env")
    assert docker_env(tmp_path / ".env") == first, "a second run changes nothing"
    copied = tmp_path / "copied.env"
    copied.write_text((PROJECT_ROOT / ".env.example").read_text())
    env = docker_env(copied)
    assert all(env[name] for name in (*SECRETS, "AIRFLOW_UID"))
    assert len(copied.read_text().split("AIRFLOW_JWT_SECRET=")) == 2, "filled in place, not appended"


def test_docker_env_starts_no_mock_when_the_user_set_a_provider(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text('AIRFLOW_CONN_ESP_DEFAULT=\'{"conn_type": "smtp", "host": "smtp.example.com"}\'\n')
    assert "COMPOSE_PROFILES" not in docker_env(env_file)


# -- 5. the provider comes from .env ---------------------------------------------------------------------
def test_the_provider_and_bounce_mailbox_come_from_env(user_env):
    smtp = '{"conn_type": "smtp", "host": "smtp.example.com", "port": 587, "login": "u", "password": "p$1"}'
    imap = '{"conn_type": "imap", "host": "imap.example.com", "login": "u", "password": "p"}'
    env = {**user_env, "AIRFLOW_CONN_ESP_DEFAULT": smtp, "AIRFLOW_CONN_BOUNCE_MAILBOX": imap}
    compose = load(COMPOSE_FILE.read_text(), env)
    for name, service in airflow_services(compose).items():
        assert service["environment"]["AIRFLOW_CONN_ESP_DEFAULT"] == smtp, name
        assert service["environment"]["AIRFLOW_CONN_BOUNCE_MAILBOX"] == imap, name
    assert connection(smtp).host == "smtp.example.com"


def test_without_a_provider_the_mock_is_the_default_and_nobody_needs_it_otherwise(compose):
    environment = compose["x-airflow-common"]["environment"]
    esp = connection(environment["AIRFLOW_CONN_ESP_DEFAULT"])
    mock = compose["services"]["mock-esp"]
    assert (esp.host, esp.port, esp.password) == ("mock-esp", 8025, mock["environment"]["MOCK_ESP_API_KEY"])
    assert environment["AIRFLOW_CONN_BOUNCE_MAILBOX"] == "", "none (an empty connection variable is no connection)"
    assert mock["profiles"] == ["mock-esp"]
    for name, service in compose["services"].items():
        dependency = service.get("depends_on", {}).get("mock-esp")
        assert dependency is None or dependency.get("required") is False, f"{name} cannot start without the mock"


# -- 6. csv_path under compose -----------------------------------------------------------------------------
def test_the_first_data_root_is_mounted_and_the_docs_name_it(compose):
    doc = ast.get_docstring(ast.parse((PROJECT_ROOT / "dags" / "welcome_emails.py").read_text()))
    readme = (PROJECT_ROOT / "README.md").read_text()
    for name, service in airflow_services(compose).items():
        first_root = service["environment"]["WELCOME_MAILER_DATA_ROOTS"].split(":")[0]
        mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in service["volumes"]}
        assert mounts.get(first_root) == "./data", f"{name}: relative csv_paths start at {first_root}"
        assert mounts["/opt/airflow/examples/input.csv"] == "./input.csv"
    assert "/opt/airflow/data" in doc and "./data" in doc, "the DAG's doc says where csv_path starts under compose"
    docker = readme.split("### With Docker")[1].split("\n### ")[0]
    assert "./data" in docker and '"csv_path": "input.csv"' in docker


# -- 7. secrets and ports ----------------------------------------------------------------------------------
@pytest.mark.parametrize("secret", SECRETS)
def test_compose_refuses_to_start_without_secrets(secret, user_env):
    for env in ({k: v for k, v in user_env.items() if k != secret}, {**user_env, secret: ""}):
        with pytest.raises(MissingVariable, match=secret):
            load(COMPOSE_FILE.read_text(), env)


def test_no_port_is_published_beyond_this_machine(compose):
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


# -- the README's Docker section is a sequence a new user can follow ---------------------------------------
def test_the_readme_docker_section_is_the_sequence():
    docker = (PROJECT_ROOT / "README.md").read_text().split("### With Docker")[1].split("\n### ")[0]
    steps = ["make docker-env", "docker compose build", "docker compose up -d"]
    positions = [docker.find(step) for step in steps]
    assert -1 not in positions and positions == sorted(positions), positions
    assert 'echo "AIRFLOW_UID=$(id -u)" > .env' in docker, "the official way, for those without make"
    assert "http://127.0.0.1:8080" in docker and "TLS" in docker and "auth manager" in docker
