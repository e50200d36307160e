"""Which SMTP replies mean "too fast / too much" (throttled: the same message later, no attempt spent)."""

from __future__ import annotations

import pytest

from welcome_mailer.transports.smtp import RETRY, THROTTLED, classify, is_throttling
from welcome_mailer.vocabulary import BLOCKED, BOUNCED


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (454, "Throttling failure: Maximum sending rate exceeded."),  # SES
        (454, "Throttling failure: Daily message quota exceeded."),  # SES
        (454, "4.7.0 Throttling failure: Maximum sending rate exceeded."),
        (451, "4.7.0 Temporary server error: sending rate too high, slow down"),
        (421, "4.7.0 Try again later, closing connection. Message rate limit exceeded"),
        (421, "4.7.500 Server busy. Please try again later from [203.0.113.4]."),  # Microsoft
        (451, "4.7.550 Access denied, please try again later"),  # Microsoft's 4.7.500-4.7.599 range
        (454, "4.7.0 Daily sending QUOTA exceeded"),
    ],
)
def test_rate_and_quota_replies_are_throttling(code, text):
    assert is_throttling(code, text)
    assert classify(code, text) == THROTTLED


@pytest.mark.parametrize(
    ("code", "text", "kind"),
    [
        (450, "4.7.1 <a@example.com>: Recipient address rejected: try again later", BLOCKED),
        (421, "4.3.2 Service not available, closing transmission channel", RETRY),
        (454, "4.7.0 TLS not available due to temporary reason", BLOCKED),
        (550, "5.7.1 Message rejected: sending rate exceeded", BLOCKED),  # a 5xx is never a throttle
        (550, "5.1.1 User unknown", BOUNCED),
        (451, "4.3.0 Mail server temporarily rejected message; the generated report follows", BLOCKED),
    ],
)
def test_other_replies_keep_their_meaning(code, text, kind):
    assert not is_throttling(code, text)
    assert classify(code, text) == kind
