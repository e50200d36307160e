"""The hooks read their connections as Airflow's own providers do, and test them for the UI."""

from __future__ import annotations

import json

import pytest

from welcome_mailer.hooks.esp import EspHook
from welcome_mailer.hooks.ledger import LedgerHook
from welcome_mailer.ledger.migrate import upgrade


def with_connection(monkeypatch, conn_id: str, **fields) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(fields))


def test_the_ledger_url_keeps_the_connections_libpq_parameters(monkeypatch):
    with_connection(
        monkeypatch,
        "contacts_db",
        conn_type="postgres",
        host="db.internal",
        port=6432,
        login="mailer",
        password="p@ss/word",
        schema="contacts",
        extra={"sslmode": "verify-full", "sslrootcert": "/etc/ca.pem", "cursor": "realdictcursor"},
    )
    url = LedgerHook().sqlalchemy_url()
    assert (url.drivername, url.host, url.port, url.username, url.password, url.database) == (
        "postgresql+psycopg2",
        "db.internal",
        6432,
        "mailer",
        "p@ss/word",
        "contacts",
    )
    assert dict(url.query) == {"sslmode": "verify-full", "sslrootcert": "/etc/ca.pem"}, "Airflow's own keys stay out"


def test_a_ledger_connection_of_another_type_is_refused_with_its_name(monkeypatch):
    with_connection(monkeypatch, "contacts_db", conn_type="mysql", host="x")
    with pytest.raises(ValueError, match=r"'contacts_db'.*postgres or sqlite, not 'mysql'"):
        LedgerHook().sqlalchemy_url()


def test_testing_the_ledger_connection_says_whether_it_is_migrated(monkeypatch, tmp_path):
    path = tmp_path / "ledger.db"
    with_connection(monkeypatch, "contacts_db", conn_type="sqlite", host=str(path))
    ok, message = LedgerHook().test_connection()
    assert not ok and "welcome-mailer db migrate" in message
    upgrade(LedgerHook().get_engine())
    assert LedgerHook().test_connection() == (True, "Connection successfully tested: the ledger's schema is up to date")


@pytest.mark.parametrize(
    ("fields", "base_url"),
    [
        ({"host": "127.0.0.1", "port": 8025}, "http://127.0.0.1:8025"),
        ({"host": "api.example.com", "schema": "https"}, "https://api.example.com"),  # Airflow's HTTP convention
        ({"host": "api.example.com", "extra": {"scheme": "https"}}, "https://api.example.com"),  # earlier versions
        ({"host": "https://api.example.com/esp"}, "https://api.example.com/esp"),
    ],
)
def test_the_provider_url_comes_from_the_connection(monkeypatch, fields, base_url):
    with_connection(monkeypatch, "esp_default", conn_type="welcome_mailer_esp", password="key", **fields)
    with EspHook().get_conn() as transport:
        assert transport.base_url == base_url
        assert transport.idempotent


def test_an_esp_connection_of_an_unknown_type_is_refused(monkeypatch):
    with_connection(monkeypatch, "esp_default", conn_type="ftp", host="x")
    with pytest.raises(ValueError, match="must be of type welcome_mailer_esp or http"):
        EspHook().get_conn()


def test_testing_the_esp_connection_proves_the_api_key(monkeypatch, esp):
    with_connection(monkeypatch, "esp_default", **esp.connection)
    assert EspHook().test_connection()[0] is True
    with_connection(monkeypatch, "esp_default", **{**esp.connection, "password": "wrong"})
    ok, message = EspHook().test_connection()
    assert not ok and "401" in message
