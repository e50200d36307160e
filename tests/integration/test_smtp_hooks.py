"""esp_default of type smtp: read as Airflow's SMTP provider reads it, plus this package's extras; the
bounce mailbox from its own connection."""

from __future__ import annotations

import json
from datetime import timedelta

from welcome_mailer.hooks.esp import EspHook
from welcome_mailer.transports.smtp import SmtpEmailProvider
from welcome_mailer.vocabulary import tag_key


def with_connection(monkeypatch, conn_id: str, **fields) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(fields))


def test_an_smtp_connection_selects_the_smtp_transport(monkeypatch):
    extra = {
        "from_email": "welcome@mailer.example",
        "from_name": "Welcome Team",
        "disable_ssl": "true",
        "timeout": 12,
        "retry_limit": 2,
        "max_connections": 6,
        "policy_rejection": "bounced",
        "list_unsubscribe": "https://mailer.example/u?k={key}",
        "settle_seconds": 60,
        "provider": "Postmark",
    }
    with_connection(
        monkeypatch, "esp_default", conn_type="smtp", host="smtp.relay.example", port=587, login="u", password="p",
        extra=extra,
    )  # fmt: skip
    monkeypatch.delenv("AIRFLOW_CONN_BOUNCE_MAILBOX", raising=False)
    monkeypatch.setenv("WELCOME_MAILER_ERASE_KEY", "the-erase-key")
    with EspHook().get_conn() as transport:
        assert isinstance(transport, SmtpEmailProvider) and transport.idempotent is False
        s = transport.settings
        assert (s.host, s.port, s.login, s.password) == ("smtp.relay.example", 587, "u", "p")
        assert (s.use_ssl, s.starttls, s.verify_certificate) == (False, True, True)  # STARTTLS on 587
        assert (s.timeout, s.retry_limit, s.max_connections) == (12, 2, 6)
        assert (s.from_email, s.from_name, s.policy_rejection) == ("welcome@mailer.example", "Welcome Team", "bounced")
        assert s.provider == "postmark", "the relay's provider: its metadata header on every message"
        [source] = EspHook.outcome_sources(transport)
        assert source.mailbox is None and source.settle == timedelta(seconds=60)
        assert source.policy_rejection == "bounced"
        # Message-IDs carry a tag keyed from the erase key; the bounce reports are checked with the same key
        assert s.key_of_tags == source.key_of_tags == tag_key(b"the-erase-key") is not None
        assert source.from_email == "welcome@mailer.example"


def test_the_bounce_mailbox_comes_from_its_connection(monkeypatch):
    with_connection(
        monkeypatch, "esp_default", conn_type="smtp", host="relay", extra={"from_email": "w@mailer.example"}
    )
    with_connection(
        monkeypatch, "bounce_mailbox", conn_type="imap", host="imap.mailer.example", login="bounces", password="pw",
        extra={"folder": "Bounces"},
    )  # fmt: skip
    with EspHook().get_conn() as transport:
        assert transport.settings.use_ssl and transport.settings.starttls  # Airflow's defaults
        [source] = EspHook.outcome_sources(transport)
    m = source.mailbox
    assert (m.host, m.port, m.login, m.password, m.use_ssl, m.folder) == (
        "imap.mailer.example", None, "bounces", "pw", True, "Bounces",
    )  # fmt: skip
    assert source.settle == timedelta(minutes=30)


def test_testing_an_smtp_connection_logs_in_to_the_relay(monkeypatch, tmp_path):
    from tests.support.smtp_relay import launch_relay

    relay = launch_relay(tmp_path, tmp_path / "Maildir", login="mailer", password="s3cret")
    try:
        good = relay.connection()
        with_connection(monkeypatch, "esp_default", **good, login="mailer", password="s3cret")
        assert EspHook().test_connection()[0] is True
        with_connection(monkeypatch, "esp_default", **good, login="mailer", password="wrong")
        ok, message = EspHook().test_connection()
        assert ok is False and "535" in message
    finally:
        relay.stop()
