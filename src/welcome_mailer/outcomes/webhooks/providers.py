"""The providers table: every provider whose events the plugin app receives, by endpoint name."""

from __future__ import annotations

from welcome_mailer.outcomes.webhooks import WebhookProvider, mailgun, mock, postmark, sendgrid, ses

PROVIDERS: dict[str, WebhookProvider] = {
    provider.name: provider
    for provider in (sendgrid.WEBHOOK, postmark.WEBHOOK, mailgun.WEBHOOK, ses.WEBHOOK, mock.WEBHOOK)
}
