"""Start the mock SMTP relay: ``python -m include.mocks.smtp_relay --port 2525`` (from the project root).

Every flag has an environment variable (shown in ``--help``). Bounce reports go to the Maildir given by
``--maildir`` (serve it over IMAP with Dovecot: ``python -m include.mocks.imap_server``); the log of every
message received goes to ``--log``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import ssl
from pathlib import Path

import uvloop

from include.mocks.smtp_relay.relay import Maildir, Relay, RelaySettings, RelaySMTP

# flag -> (environment variable, type, default)
OPTIONS: dict[str, tuple[str, type, object]] = {
    "host": ("MOCK_SMTP_HOST", str, "127.0.0.1"),
    "port": ("MOCK_SMTP_PORT", int, 2525),
    "seed": ("MOCK_SMTP_SEED", int, 42),
    "delivered-rate": ("MOCK_SMTP_DELIVERED_RATE", float, 0.8),
    "bounced-rate": ("MOCK_SMTP_BOUNCED_RATE", float, 0.1),
    "blocked-rate": ("MOCK_SMTP_BLOCKED_RATE", float, 0.1),
    "in-dialogue-rate": ("MOCK_SMTP_IN_DIALOGUE_RATE", float, 0.5),
    "report-min-seconds": ("MOCK_SMTP_REPORT_MIN_SECONDS", float, 1.0),
    "report-max-seconds": ("MOCK_SMTP_REPORT_MAX_SECONDS", float, 5.0),
    "connect-421-rate": ("MOCK_SMTP_CONNECT_421_RATE", float, 0.0),
    "drop-after-data-rate": ("MOCK_SMTP_DROP_AFTER_DATA_RATE", float, 0.0),
    "latency-ms": ("MOCK_SMTP_LATENCY_MS", float, 0.0),
    "slow-data-reply-rate": ("MOCK_SMTP_SLOW_DATA_REPLY_RATE", float, 0.0),
    "slow-reply-seconds": ("MOCK_SMTP_SLOW_REPLY_SECONDS", float, 5.0),
    "pipelining": ("MOCK_SMTP_PIPELINING", int, 1),  # 0: the relay does not offer PIPELINING
    "dsn": ("MOCK_SMTP_DSN", int, 1),  # 0: the relay does not offer DSN (no success reports: the settle time)
    "delivered-held-rate": ("MOCK_SMTP_DELIVERED_HELD_RATE", float, 0.5),  # success reports after 1-5 s
    "login": ("MOCK_SMTP_LOGIN", str, ""),
    "password": ("MOCK_SMTP_PASSWORD", str, ""),
    "tls-cert": ("MOCK_SMTP_TLS_CERT", str, ""),  # with --tls-key: STARTTLS offered and required
    "tls-key": ("MOCK_SMTP_TLS_KEY", str, ""),
    "maildir": ("MOCK_SMTP_MAILDIR", str, "data/bounces/Maildir"),
    "log": ("MOCK_SMTP_LOG", str, "data/mock_smtp_messages.jsonl"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m include.mocks.smtp_relay", description=__doc__)
    for flag, (env, kind, default) in OPTIONS.items():
        parser.add_argument(f"--{flag}", type=kind, default=kind(os.environ.get(env, default)), help=f"env {env}")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    settings = RelaySettings(
        seed=args.seed,
        delivered_rate=args.delivered_rate,
        bounced_rate=args.bounced_rate,
        blocked_rate=args.blocked_rate,
        in_dialogue_rate=args.in_dialogue_rate,
        report_min_seconds=args.report_min_seconds,
        report_max_seconds=args.report_max_seconds,
        connect_421_rate=args.connect_421_rate,
        drop_after_data_rate=args.drop_after_data_rate,
        latency_ms=args.latency_ms,
        slow_data_reply_rate=args.slow_data_reply_rate,
        slow_reply_seconds=args.slow_reply_seconds,
        pipelining=bool(args.pipelining),
        dsn=bool(args.dsn),
        delivered_held_rate=args.delivered_held_rate,
        login=args.login,
        password=args.password,
    )
    log_path = Path(args.log)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    relay = Relay(settings, log_path, Maildir(Path(args.maildir)) if args.maildir else None, "mock-relay.invalid")
    tls = None
    if args.tls_cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
    options = {
        "hostname": "mock-relay.invalid",
        "tls_context": tls,
        "require_starttls": tls is not None,
        "auth_required": bool(settings.login),
        "auth_require_tls": tls is not None,
        "authenticator": relay.authenticate if settings.login else None,
    }
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: RelaySMTP(relay, **options), args.host, args.port)
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    print(f"mock SMTP relay on {args.host}:{args.port}, log {log_path}, bounce reports to {args.maildir}", flush=True)
    async with server:
        await stop.wait()
    relay.close()


def main(argv: list[str] | None = None) -> None:
    # uvloop: the relay's event loop in C, as a real relay's is; the Python one costs the mock a third more CPU
    # per message, on the machine that runs the pipeline too.
    uvloop.run(serve(parse_args(argv)))


if __name__ == "__main__":
    main()
