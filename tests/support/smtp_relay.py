"""Fixtures for the SMTP tests: the mock relay as a process, Dovecot serving its bounce mailbox, and a
self-signed certificate. Test modules import the fixtures they use."""

from __future__ import annotations

import datetime
import email
import email.policy
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from include.local.net import free_port
from include.mocks import imap_server
from include.mocks.smtp_relay.relay import read_log
from tests.support import PROJECT_ROOT

FROM_EMAIL = "welcome@mailer.example"


@dataclass
class RunningRelay:
    port: int
    process: subprocess.Popen
    log_path: Path
    maildir: Path
    output: Path

    def connection(self, **extra) -> dict:
        """AIRFLOW_CONN_ESP_DEFAULT (JSON form): a plain connection unless the extras say otherwise."""
        return {
            "conn_type": "smtp",
            "host": "127.0.0.1",
            "port": self.port,
            "extra": {
                "from_email": FROM_EMAIL,
                "from_name": "Welcome Team",
                "disable_ssl": True,
                "disable_tls": True,
                "timeout": 10,
                "settle_seconds": 2,
                **extra,
            },
        }

    def messages(self) -> list[dict]:
        return read_log(self.log_path)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def launch_relay(directory: Path, maildir: Path, **flags) -> RunningRelay:
    port = free_port()
    log_path = directory / f"mock_smtp_{port}.jsonl"
    args = [sys.executable, "-m", "include.mocks.smtp_relay", "--port", str(port), "--log", str(log_path)]
    args += ["--maildir", str(maildir)]
    for name, value in flags.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    output = directory / f"mock_smtp_{port}.out"
    with output.open("w") as out:
        process = subprocess.Popen(args, cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the mock relay exited: {output.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return RunningRelay(port, process, log_path, maildir, output)
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("the mock relay did not start")


@pytest.fixture
def imap(tmp_path) -> Iterator[imap_server.ImapServer]:
    """Dovecot serving a fresh bounce mailbox (skipped without Dovecot, except under CI=true)."""
    if not imap_server.available():
        reason = "Dovecot is not installed (apt-get install dovecot-imapd)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    # Outside pytest's tmp_path: Dovecot may run as nobody, who cannot enter root's 0700 directories.
    root = Path(tempfile.mkdtemp(prefix="welcome-mailer-imap-"))
    root.chmod(0o755)
    server = imap_server.start(root, free_port())
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def start_relay(tmp_path, imap) -> Iterator:
    """Start mock relays with the given flags, writing their reports into the ``imap`` mailbox."""
    started: list[RunningRelay] = []

    def start(**flags) -> RunningRelay:
        started.append(launch_relay(tmp_path, imap.maildir, **flags))
        return started[-1]

    yield start
    for relay in started:
        relay.stop()


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 / localhost and its key, as PEM files."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "relay.crt", directory / "relay.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def by_recipient(entries: list[dict]) -> dict[str, list[dict]]:
    grouped = defaultdict(list)
    for entry in entries:
        grouped[entry["to"]].append(entry)
    return grouped


def assert_relay_log_invariants(entries, expected: dict[str, str], max_attempts: int) -> dict[str, int]:
    """From the relay's log: nobody got a message after one that could arrive; nobody forgotten; every
    received message is the right greeting, with its own Message-ID, to exactly one recipient."""
    grouped = by_recipient(entries)
    assert set(grouped) == set(expected), "every contact reached the relay, and nobody else"
    received = [e for e in entries if e["received"]]
    assert len({e["message_id"] for e in received}) == len(received), "a Message-ID was reused"
    finals = defaultdict(int)
    for address, history in grouped.items():
        outcomes = [e["outcome"] for e in history]
        assert "sent" not in [e["status"] for e in history], f"{address}: an outcome never came: {outcomes}"
        assert all(o == "blocked" for o in outcomes[:-1]), f"{address}: a message after a final one: {outcomes}"
        assert len(history) <= max_attempts
        if outcomes[-1] == "blocked":
            assert len(history) == max_attempts, f"{address}: blocked but resent {len(history)} times"
        for entry in history:
            if entry["received"]:
                message = email.message_from_bytes(entry["raw"], policy=email.policy.default)
                assert [a.addr_spec for a in message["To"].addresses] == [address]
                assert message.get_content().strip() == f"Hi {expected[address]}, Welcome!"
        finals[outcomes[-1]] += 1
    return dict(finals)
