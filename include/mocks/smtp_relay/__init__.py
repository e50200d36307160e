"""A mock SMTP relay (aiosmtpd) with the mock ESP's seeded semantics, a bounce mailbox it writes RFC 3464
reports into (Maildir), faults for tests, and a log of every message it received (raw bytes included)."""
