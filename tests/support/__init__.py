"""What the tests share: processes they start (the mock ESP, the SMTP relay with its mailbox, an S3 API), the
invariants every run must hold, and provider webhook payloads. Tests import these from here, not from conftest
and not from each other's modules."""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
