"""The no-orchestration baseline for `make bench`: one asyncio process, no Airflow, against the same mock ESP.

    python -m include.bench.baseline FILE --esp-url URL --api-key KEY [--ledger-url URL]

Parses with the package's own code and ledger (Postgres or SQLite) and claims in one INSERT of the
staged contacts that the ledger does not know (its own statement: the package's claim also records each
first attempt before sending, which a program that keeps its outcomes in memory has no use for), then
sends in 1,000-message batches over 16 connections, polls outcomes in bulk in fixed 0.3 s rounds, and
resends blocked contacts at once with a new idempotency key, up to 5 messages each. Outcomes stay in
memory (nothing is recorded after the claim): the floor an orchestrated run is compared with, not a
product. Prints one JSON line: seconds per phase and outcome counts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
from sqlalchemy import literal, select

BATCH = 1000
CONNECTIONS = 16
POLL_SECONDS = 0.3
MAX_ATTEMPTS = 5


def parse_and_claim(csv_path: Path, ledger_url: str) -> tuple[list[tuple[str, str]], dict[str, float]]:
    from welcome_mailer.ledger import CLAIMED, Ledger, bulk, connect, sent_contacts, staged_contacts
    from welcome_mailer.ledger.migrate import upgrade
    from welcome_mailer.pipeline import parse_file
    from welcome_mailer.vocabulary import utcnow

    engine = connect(ledger_url)
    upgrade(engine)
    ledger = Ledger(engine)
    ledger.renew_lease("baseline")
    started = time.perf_counter()
    parse_file(ledger, "baseline", csv_path, Path(tempfile.gettempdir()) / "baseline_rejected.csv")
    parsed = time.perf_counter()
    now = utcnow()
    new_contacts = select(
        staged_contacts.c.email, staged_contacts.c.name, literal(CLAIMED), literal(0), literal(0),
        literal("baseline"), literal(now), literal(now),
    ).where(staged_contacts.c.run_id == "baseline")  # fmt: skip
    columns = ("email", "name", "status", "attempts", "claim_attempts", "run_id", "created_at", "updated_at")
    with engine.begin() as conn:
        insert = bulk.dialect_insert(conn, sent_contacts).from_select(columns, new_contacts).on_conflict_do_nothing()
        contacts = conn.execute(insert.returning(sent_contacts.c.email, sent_contacts.c.name)).all()
    engine.dispose()
    return [tuple(c) for c in contacts], {"parse": parsed - started, "claim": time.perf_counter() - parsed}


async def deliver(contacts: list[tuple[str, str]], esp_url: str, api_key: str) -> tuple[Counter, dict[str, float]]:
    limits = httpx.Limits(max_connections=CONNECTIONS)
    headers = {"Authorization": f"Bearer {api_key}"}
    gate = asyncio.Semaphore(CONNECTIONS)
    pending: dict[str, tuple[str, str, int]] = {}  # message id -> (email, name, attempt)
    final: Counter = Counter()
    started = time.perf_counter()

    async with httpx.AsyncClient(base_url=esp_url, headers=headers, limits=limits, timeout=60) as client:

        async def post(path: str, body: dict) -> dict:
            async with gate:
                response = await client.post(path, json=body)
                response.raise_for_status()
                return response.json()

        async def send(batch: list[tuple[str, str, int]]) -> None:
            body = {
                "messages": [
                    {"to": e, "subject": "Welcome!", "text": f"Hi {n or 'there'}, Welcome!",
                     "idempotency_key": f"baseline-{e}-{a}"}
                    for e, n, a in batch
                ]
            }  # fmt: skip
            for item, result in zip(batch, (await post("/v1/messages/batch", body))["results"], strict=True):
                if result.get("id"):
                    pending[result["id"]] = item
                else:
                    final["bounced"] += 1

        async def send_all(items: list[tuple[str, str, int]]) -> None:
            await asyncio.gather(*(send(items[i : i + BATCH]) for i in range(0, len(items), BATCH)))

        await send_all([(email, name, 1) for email, name in contacts])
        sent = time.perf_counter()
        while pending:
            await asyncio.sleep(POLL_SECONDS)
            ids = list(pending)
            answers = await asyncio.gather(
                *(post("/v1/messages/lookup", {"ids": ids[i : i + BATCH]}) for i in range(0, len(ids), BATCH))
            )
            resend = []
            for message in (m for answer in answers for m in answer["messages"]):
                status = message["status"]
                if status == "sent":
                    continue
                email, name, attempt = pending.pop(message["id"])
                if status == "blocked" and attempt < MAX_ATTEMPTS:
                    resend.append((email, name, attempt + 1))
                else:
                    final["failed" if status == "blocked" else status] += 1
            if resend:
                await send_all(resend)
    return final, {"send": sent - started, "outcomes": time.perf_counter() - sent}


def arguments(doc: str) -> argparse.ArgumentParser:
    """The command line of both baselines (this one and include/bench/baseline_pipeline.py), as the bench calls them."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv", type=Path)
    parser.add_argument("--esp-url", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--ledger-url", help="SQLAlchemy URL of an empty ledger (default: a SQLite file)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = arguments(__doc__).parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="baseline-") as tmp:
        contacts, phases = parse_and_claim(args.csv, args.ledger_url or f"sqlite:///{Path(tmp) / 'ledger.db'}")
        outcomes, delivery = asyncio.run(deliver(contacts, args.esp_url, args.api_key))
    phases.update(delivery)
    print(
        json.dumps(
            {
                "seconds": round(time.perf_counter() - started, 2),
                "phase_seconds": {k: round(v, 2) for k, v in phases.items()},
                "contacts": len(contacts),
                "outcomes": dict(outcomes),
            }
        )
    )


if __name__ == "__main__":
    main()
