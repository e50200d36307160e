"""Helpers for tests on the local stack: per-test email domains, reading the shared ESP log, runs."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from include.tools.generate_contacts import generate_rows
from tests.support.esp import read_message_log
from tests.support.invariants import assert_ledger_matches, assert_run_invariants, expected_contacts

MAX_ATTEMPTS = 5  # welcome_emails' default

_GENERATED_DOMAIN = re.compile(r"@(mail\.)?example\.", re.IGNORECASE)


def with_domain(line: str, domain: str) -> str:
    """Move a generated row's address under ``domain`` (whatever the case the generator gave it)."""
    return _GENERATED_DOMAIN.sub(lambda m: f"@{m.group(1) or ''}{domain}.example.", line)


def contact_file(stack, name: str, rows: int, seed: int, domain: str) -> Path:
    """A generated contact list whose addresses all lie under ``domain`` (one per test)."""
    path = stack.data / f"{name}.csv"
    path.write_text("\n".join(with_domain(line, domain) for line in generate_rows(rows, seed=seed)) + "\n")
    return path


def messages_for(stack, domain: str) -> list[dict]:
    """The stack ESP's messages to one test's domain."""
    return [m for m in read_message_log(stack.esp) if f"{domain}.example." in m["to"]]


def ledger_url(stack) -> str:
    return f"{stack.config.postgres}/{stack.config.ledger_db}"


def run_and_wait(stack, csv_path: Path, **conf) -> tuple[str, str]:
    run_id = stack.trigger("welcome_emails", {"csv_path": str(csv_path), **conf})
    return run_id, stack.wait_for_run("welcome_emails", run_id, timeout=600)


@contextmanager
def esp_faults(stack, **faults) -> Iterator[None]:
    """Switch the stack ESP's fault injection on for the block, and off again whatever happens."""
    stack.esp.put("/admin/faults", json=faults).raise_for_status()
    try:
        yield
    finally:
        stack.esp.put("/admin/faults", json={}).raise_for_status()


def assert_proven_from_outside(stack, domain: str, *paths: Path) -> None:
    """The ESP's log and the ledger show every contact of these files handled exactly as promised."""
    messages = messages_for(stack, domain)
    assert_run_invariants(messages, expected_contacts(*paths), MAX_ATTEMPTS)
    assert_ledger_matches(ledger_url(stack), messages)
