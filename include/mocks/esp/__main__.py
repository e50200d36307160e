"""Start the mock ESP: ``python -m include.mocks.esp --port 8025`` (from the project root).

Every flag has an environment variable (shown in ``--help``), so compose files and scripts can configure
the service without a command line.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import uvicorn

from include.mocks.esp.app import FaultSettings, create_app
from include.mocks.esp.push import PushSettings
from include.mocks.esp.store import OutcomeSettings

# flag -> (environment variable, type, default)
OPTIONS: dict[str, tuple[str, type, object]] = {
    "host": ("MOCK_ESP_HOST", str, "127.0.0.1"),
    "port": ("MOCK_ESP_PORT", int, 8025),
    "api-key": ("MOCK_ESP_API_KEY", str, "mock-esp-key"),
    "seed": ("MOCK_ESP_SEED", int, 42),
    "delivered-rate": ("MOCK_ESP_DELIVERED_RATE", float, 0.8),
    "bounced-rate": ("MOCK_ESP_BOUNCED_RATE", float, 0.1),
    "blocked-rate": ("MOCK_ESP_BLOCKED_RATE", float, 0.1),
    "hold-rate": ("MOCK_ESP_HOLD_RATE", float, 0.1),
    "hold-min-seconds": ("MOCK_ESP_HOLD_MIN_SECONDS", float, 1.0),
    "hold-max-seconds": ("MOCK_ESP_HOLD_MAX_SECONDS", float, 5.0),
    "fail-rate": ("MOCK_ESP_FAIL_RATE", float, 0.0),
    "lose-response-rate": ("MOCK_ESP_LOSE_RESPONSE_RATE", float, 0.0),
    "rate-limit-rps": ("MOCK_ESP_RATE_LIMIT_RPS", float, 0.0),
    "latency-ms": ("MOCK_ESP_LATENCY_MS", float, 0.0),
    "journal": ("MOCK_ESP_JOURNAL", str, ""),  # a file that keeps the messages across restarts
    # push mode (off without a URL): signed outcome events posted to this webhook, as real providers do
    "push-url": ("MOCK_ESP_PUSH_URL", str, ""),
    "push-secret": ("MOCK_ESP_PUSH_SECRET", str, ""),
    "push-batch-size": ("MOCK_ESP_PUSH_BATCH_SIZE", int, 100),
    "push-duplicate-rate": ("MOCK_ESP_PUSH_DUPLICATE_RATE", float, 0.0),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m include.mocks.esp", description=__doc__)
    for flag, (env, kind, default) in OPTIONS.items():
        parser.add_argument(f"--{flag}", type=kind, default=kind(os.environ.get(env, default)), help=f"env {env}")
    return parser.parse_args(argv)


def build_app(args: argparse.Namespace):
    outcomes = OutcomeSettings(
        seed=args.seed,
        delivered_rate=args.delivered_rate,
        bounced_rate=args.bounced_rate,
        blocked_rate=args.blocked_rate,
        hold_rate=args.hold_rate,
        hold_min_seconds=args.hold_min_seconds,
        hold_max_seconds=args.hold_max_seconds,
    )
    faults = FaultSettings(
        fail_rate=args.fail_rate,
        lose_response_rate=args.lose_response_rate,
        rate_limit_rps=args.rate_limit_rps,
        latency_ms=args.latency_ms,
        seed=args.seed,
    )
    push = None
    if args.push_url:
        if not args.push_secret:
            raise SystemExit("--push-url needs --push-secret (the receiver verifies every post)")
        push = PushSettings(
            args.push_url, args.push_secret, args.push_batch_size, args.push_duplicate_rate, seed=args.seed
        )
    return create_app(args.api_key, outcomes, faults, Path(args.journal) if args.journal else None, push)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    uvicorn.run(build_app(args), host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
