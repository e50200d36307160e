"""The plugin app's event and unsubscribe endpoints over HTTP (FastAPI's test client) on a test ledger, with
secrets the payload builders in ``webhook_payloads`` sign with."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.support.webhook_payloads import SNS_TOPIC, SendGridSigner, SnsSigner
from welcome_mailer.ledger.schema import provider_events
from welcome_mailer.unsubscribe import UnsubscribeSettings
from welcome_mailer.web.app import create_app
from welcome_mailer.web.events import WebhookSettings, sns_client, webhook_settings
from welcome_mailer.web.ledger import ledger_source
from welcome_mailer.web.unsubscribe import unsubscribe_settings

SENDGRID = SendGridSigner()
SNS = SnsSigner()
SETTINGS = WebhookSettings(
    sendgrid_public_key=SENDGRID.public_key,
    postmark_credentials="hooks:pm-secret",
    mailgun_signing_key="mg-key",
    sns_topic_arns=frozenset({SNS_TOPIC}),
    mock_secret="mock-secret",
)
UNSUBSCRIBE = UnsubscribeSettings("http://testserver/unsubscribe", "unsub-secret")


@contextmanager
def events_client(ledger) -> Iterator[TestClient]:
    """The plugin app over HTTP on this ledger, with the test providers' secrets and SNS without network."""
    app = create_app()
    app.dependency_overrides[webhook_settings] = lambda: SETTINGS
    app.dependency_overrides[unsubscribe_settings] = lambda: UNSUBSCRIBE
    app.dependency_overrides[ledger_source] = lambda: lambda: ledger
    SNS.confirmed.clear()
    app.dependency_overrides[sns_client] = lambda: (SNS.certificate, SNS.confirmed.append)
    with TestClient(app) as client:
        yield client


def logged_requests(ledger) -> list:
    with ledger.engine.connect() as conn:
        return conn.execute(select(provider_events).order_by(provider_events.c.id)).all()
