"""docker-compose.yaml against the official file and an attacker (issue #30, items 3b and 4): one API secret
key, log retention, database passwords from .env with the ledger on its own role, a required AIRFLOW_UID,
one-click unsubscribe wired, the mock provider's endpoint only where the mock runs and never with a
published secret, and the header saying what is left to the operator.
"""

from __future__ import annotations

import dataclasses

import pytest

from include.local.stack import Stack, StackConfig, unsubscribe_env
from tests.deploy.compose import COMPOSE_FILE, docker_env, load
from tests.deploy.test_compose import airflow_services, connection
from tests.support import PROJECT_ROOT

SMTP_PROVIDER = '{"conn_type": "smtp", "host": "smtp.example.com", "port": 587}'


@pytest.fixture(scope="module")
def user_env(tmp_path_factory) -> dict[str, str]:
    """The .env of a user who followed the README (the mock ESP as the provider)."""
    return docker_env(tmp_path_factory.mktemp("project") / ".env")


@pytest.fixture(scope="module")
def provider_env(tmp_path_factory) -> dict[str, str]:
    """The .env of a user who set a real provider before running make docker-env."""
    env_file = tmp_path_factory.mktemp("provider") / ".env"
    env_file.write_text(f"AIRFLOW_CONN_ESP_DEFAULT='{SMTP_PROVIDER}'\n")
    return docker_env(env_file)


@pytest.fixture(scope="module")
def compose(user_env) -> dict:
    return load(COMPOSE_FILE.read_text(), user_env)


# -- 3b. the mock provider's endpoint ------------------------------------------------------------------
def test_no_published_secret_for_the_mock_endpoint_in_the_compose_file():
    assert "mock-push-secret" not in COMPOSE_FILE.read_text()


def test_with_the_mock_its_endpoint_and_the_mock_share_a_fresh_secret(compose, user_env):
    secret = user_env["MOCK_ESP_PUSH_SECRET"]
    assert len(secret) >= 32 and user_env["COMPOSE_PROFILES"] == "mock-esp"
    assert compose["services"]["mock-esp"]["environment"]["MOCK_ESP_PUSH_SECRET"] == secret
    for name, service in airflow_services(compose).items():
        assert service["environment"]["WELCOME_MAILER_MOCK_WEBHOOK_SECRET"] == secret, name


def test_with_a_real_provider_the_mock_endpoint_has_no_secret(provider_env):
    assert "MOCK_ESP_PUSH_SECRET" not in provider_env and "COMPOSE_PROFILES" not in provider_env
    compose = load(COMPOSE_FILE.read_text(), provider_env)
    for name, service in airflow_services(compose).items():
        assert service["environment"]["AIRFLOW_CONN_ESP_DEFAULT"] == SMTP_PROVIDER, name
        assert service["environment"]["WELCOME_MAILER_MOCK_WEBHOOK_SECRET"] == "", f"{name}: the endpoint refuses"


def test_the_local_stack_sets_the_mock_secret_only_when_it_runs_the_mock(tmp_path, monkeypatch):
    monkeypatch.delenv("WELCOME_MAILER_MOCK_WEBHOOK_SECRET", raising=False)
    monkeypatch.delenv("AIRFLOW_CONN_ESP_DEFAULT", raising=False)
    stack = Stack(dataclasses.replace(StackConfig.from_env(), home=tmp_path))
    assert stack.env()["WELCOME_MAILER_MOCK_WEBHOOK_SECRET"] == stack.config.esp_push_secret
    monkeypatch.setenv("AIRFLOW_CONN_ESP_DEFAULT", SMTP_PROVIDER)
    assert "WELCOME_MAILER_MOCK_WEBHOOK_SECRET" not in stack.env()


def test_a_published_secret_enables_nothing():
    from welcome_mailer.web.events import WebhookSettings

    assert WebhookSettings.from_env({"WELCOME_MAILER_MOCK_WEBHOOK_SECRET": "mock-push-secret"}).mock_secret == ""
    assert WebhookSettings.from_env({"WELCOME_MAILER_MOCK_WEBHOOK_SECRET": "s3cret-of-mine"}).mock_secret == (
        "s3cret-of-mine"
    )


# -- 4. compose details --------------------------------------------------------------------------------
def test_one_api_secret_key_for_every_airflow_container(compose, user_env):
    key = user_env["AIRFLOW_API_SECRET_KEY"]
    assert len(key) >= 32
    for name, service in airflow_services(compose).items():
        assert service["environment"]["AIRFLOW__API__SECRET_KEY"] == key, name


def test_logs_are_groomed_by_a_container_that_holds_nothing_else(compose):
    groomer = compose["services"]["log-groomer"]
    assert groomer["entrypoint"] == "/bin/bash" and groomer["command"] == ["/clean-logs"]  # the image's script
    assert groomer["image"] == compose["services"]["airflow-init"]["image"]
    assert groomer["volumes"] == ["./logs:/opt/airflow/logs"], "the logs only"
    assert groomer["environment"]["AIRFLOW_HOME"] == "/opt/airflow", "the script cleans $AIRFLOW_HOME/logs"
    assert groomer["environment"]["AIRFLOW__LOG_RETENTION_DAYS"] == "15"
    assert not [key for key in groomer["environment"] if "SECRET" in key or key.startswith("AIRFLOW_CONN")]
    assert "env_file" not in groomer and groomer["restart"] == "always"
    assert groomer["user"] == compose["services"]["airflow-worker"]["user"], "it may delete the workers' logs"


def test_the_postgres_password_comes_from_env(user_env):
    text = COMPOSE_FILE.read_text()
    assert "airflow:airflow@" not in text and "POSTGRES_PASSWORD: airflow" not in text
    password = "another-Pass_word-42"
    compose = load(text, {**user_env, "POSTGRES_PASSWORD": password})
    assert compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"] == password
    for name, service in airflow_services(compose).items():
        metadata = service["environment"]["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
        assert metadata == f"postgresql+psycopg2://airflow:{password}@postgres/airflow", name
        assert "AIRFLOW__CELERY__RESULT_BACKEND" not in service["environment"], "it defaults to the metadata DB"
    assert len(user_env["POSTGRES_PASSWORD"]) >= 24


def test_the_ledger_has_its_own_role_and_password(compose, user_env):
    for name, service in airflow_services(compose).items():
        metadata = connection(service["environment"]["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
        ledger = connection(service["environment"]["AIRFLOW_CONN_CONTACTS_DB"])
        assert ledger.login != metadata.login, f"{name}: the ledger does not use the metadata superuser"
        assert (ledger.schema, ledger.password) == ("contacts", user_env["LEDGER_DB_PASSWORD"]), name
    assert user_env["LEDGER_DB_PASSWORD"] != user_env["POSTGRES_PASSWORD"]


def test_one_click_unsubscribe_is_wired_as_on_the_local_stack(compose, user_env):
    names = set(unsubscribe_env("url", "secret"))
    assert names <= set(Stack().env())
    secret = user_env["WELCOME_MAILER_UNSUBSCRIBE_SECRET"]
    assert len(secret) >= 32
    for name, service in airflow_services(compose).items():
        environment = service["environment"]
        assert environment["WELCOME_MAILER_UNSUBSCRIBE_SECRET"] == secret, name
        assert environment["WELCOME_MAILER_UNSUBSCRIBE_URL"] == "http://127.0.0.1:8080/welcome-mailer/unsubscribe"
    public = load(COMPOSE_FILE.read_text(), {**user_env, "WELCOME_MAILER_UNSUBSCRIBE_URL": "https://x.example/u"})
    assert (
        public["services"]["airflow-worker"]["environment"]["WELCOME_MAILER_UNSUBSCRIBE_URL"] == "https://x.example/u"
    )


def test_the_header_and_the_docs_say_what_is_still_the_operators_job():
    header = COMPOSE_FILE.read_text().split("\nx-airflow-common:")[0]
    assert "operator's job" in header
    production = (PROJECT_ROOT / "docs" / "production.md").read_text()
    before = production.split("## Before production")[1].split("\n## ")[0]
    for duty in ("TLS", "auth manager", "back", "WELCOME_MAILER_UNSUBSCRIBE_URL", "webhook", "monitor"):
        assert duty in header or duty.lower() in header.lower(), f"the header does not name {duty!r}"
        assert duty in before or duty.lower() in before.lower(), f"'Before production' does not name {duty!r}"
