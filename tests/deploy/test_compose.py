"""docker-compose.yaml: valid against the Compose Specification, and the same stack as `make stack-up`.

There is no Docker engine here, so the file is validated the way `docker compose config` does it:
interpolate ${VAR:-default}, resolve anchors and merge keys, then check it against the specification.
"""

from __future__ import annotations

import json
import re

import compose_spec
import pytest
import yaml

from include.stack import SHARED_SETTINGS, Stack, shared_settings
from tests.conftest import PROJECT_ROOT

COMPOSE_FILE = PROJECT_ROOT / "docker-compose.yaml"
_VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?::?-([^}]*))?\}")


def interpolate(text: str, env: dict[str, str] | None = None) -> str:
    env = env or {}
    return _VARIABLE.sub(lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(2) or ""), text)


def load(text: str) -> dict:
    return yaml.safe_load(interpolate(text))


def validate(text: str) -> None:
    compose_spec.PyCompose.from_json(json.dumps(load(text))).validate()


@pytest.fixture(scope="module")
def compose() -> dict:
    return load(COMPOSE_FILE.read_text())


def test_compose_file_is_valid():
    validate(COMPOSE_FILE.read_text())


@pytest.mark.parametrize(
    ("original", "broken"),
    [
        ("restart: always", "restart: sometimes"),
        ('"8080:8080"', '"80a80:8080"'),
        ("start_period: 5s", "start_perod: 5s"),
    ],
)
def test_the_validator_catches_mistakes(original, broken):
    with pytest.raises(ValueError):
        validate(COMPOSE_FILE.read_text().replace(original, broken, 1))


def test_official_shape_plus_the_mock_esp(compose):
    services = set(compose["services"])
    assert services == {
        "postgres", "redis", "airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
        "airflow-triggerer", "airflow-worker", "flower", "mock-esp",
    }  # fmt: skip
    assert compose["services"]["flower"]["profiles"] == ["flower"]
    assert "x-airflow-common" in compose
    worker = compose["services"]["airflow-worker"]
    assert worker["command"] == "celery worker" and "container_name" not in worker, "must scale with --scale"


def test_airflow_services_mount_the_project(compose):
    for name, service in compose["services"].items():
        if name.startswith("airflow-") or name == "flower":
            targets = {volume.split(":")[1] for volume in service["volumes"]}
            assert {"/opt/airflow/dags", "/opt/airflow/plugins", "/opt/airflow/include", "/opt/airflow/data"} <= targets


def test_compose_and_the_local_stack_share_their_settings(compose):
    local = Stack().env()
    shared = shared_settings()
    for name, service in compose["services"].items():
        if name.startswith("airflow-") or name == "flower":
            assert service["env_file"] == [str(SHARED_SETTINGS.relative_to(PROJECT_ROOT))], name
            overridden = set(shared) & set(service["environment"])
            assert not overridden, f"{name} overrides shared settings {overridden}"
    assert all(local[key] == value for key, value in shared.items()), "the local stack applies the shared file"
    assert shared["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"


def test_both_stacks_wire_the_same_connections_pool_and_image(compose):
    environment = compose["x-airflow-common"]["environment"]
    esp = json.loads(environment["AIRFLOW_CONN_ESP_DEFAULT"])
    ledger = json.loads(environment["AIRFLOW_CONN_CONTACTS_DB"])
    assert (esp["conn_type"], esp["host"]) == ("http", "mock-esp")
    assert (ledger["conn_type"], ledger["schema"]) == ("postgres", "contacts")
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
    assert "requirements.lock" in dockerfile
