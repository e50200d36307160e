"""The lean durable program, `make bench`'s yardstick (issue 34): the package's job without orchestration.

    python -m include.bench.yardstick FILE --esp-url URL --api-key KEY [--ledger-url URL] [--records-nothing]

One asyncio process. It reads the file with the package's own parser (welcome_mailer.contacts: the same
contacts, the same rejected rows, written to a CSV) and claims them with one insert-or-skip into a table of
its own. Then, round after round, it writes the round's attempts (one row per email and attempt number: the
provider's idempotency key is made of them) in one bulk statement committed before anything is sent; sends
500-message batches over 16 connections; records the accepted ids in one bulk UPDATE; polls outcomes every
0.3 s (the provider's lookup endpoint) and records each poll's in one bulk UPDATE; and resends blocked
contacts at once as a new attempt, up to the DAG's 5 messages a contact. Bounced is never retried.

Its tables are its own (yardstick_contacts, yardstick_attempts), in a SQLite file or in the Postgres
database ``--ledger-url`` names. A bulk statement is, on Postgres, one statement over arrays (unnest); on
SQLite, the claim one INSERT ... SELECT over a JSON array, the other writes one prepared statement executed
over every row (executemany), which was as fast as a JSON array there (1M rows: 3-4 s each way).

``--records-nothing``: the same program, but nothing is recorded after the claim (attempts and outcomes
stay in memory): the bench's no-ledger baseline; its time against the yardstick's is what durability costs.

Prints one JSON line: seconds per phase, contacts, messages sent and final outcomes.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import sqlite3
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import httpx
from sqlalchemy.engine import make_url

from welcome_mailer.contacts import ContactReader
from welcome_mailer.greeting import SUBJECT, welcome_text
from welcome_mailer.ledger.engine import sqlite_bulk_cache
from welcome_mailer.vocabulary import idempotency_key

BATCH = 500
LOOKUP_BATCH = 1000  # the most ids the provider answers in one lookup
CONNECTIONS = 16
POLL_SECONDS = 0.3
MAX_ATTEMPTS = 5  # the DAG's max_attempts default

# (email, attempt, message id or None, status): an attempt's row after a send or a poll
Recorded = tuple[str, int, str | None, str]


class SqliteStore:
    """The tables in a SQLite file, in WAL with synchronous=NORMAL as the package's ledger is (a commit
    survives the process's crash); its writes of a whole round's rows at once (the claim, a round's
    attempts) with the page cache the package's claim has (``sqlite_bulk_cache``)."""

    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS yardstick_contacts (email TEXT PRIMARY KEY, name TEXT NOT NULL) WITHOUT ROWID"
        )
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS yardstick_attempts (email TEXT NOT NULL, attempt INTEGER NOT NULL,"
            " message_id TEXT, status TEXT NOT NULL, PRIMARY KEY (email, attempt)) WITHOUT ROWID"
        )

    def claim(self, contacts: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """The contacts no earlier run claimed, now claimed (one insert-or-skip)."""
        with sqlite_bulk_cache(self.db):
            self.db.execute("BEGIN IMMEDIATE")
            claimed = self.db.execute(
                "INSERT INTO yardstick_contacts (email, name) SELECT value ->> 0, value ->> 1 FROM json_each(?)"
                " WHERE true ON CONFLICT DO NOTHING RETURNING email, name",  # WHERE: SQLite's upsert after a SELECT
                (json.dumps(contacts),),
            ).fetchall()
            self.db.execute("COMMIT")
        return claimed

    def start_attempts(self, attempts: list[tuple[str, int]]) -> None:
        with sqlite_bulk_cache(self.db):
            self._write("INSERT INTO yardstick_attempts (email, attempt, status) VALUES (?, ?, 'sending')", attempts)

    def record(self, rows: list[Recorded]) -> None:
        self._write(
            "UPDATE yardstick_attempts SET message_id = coalesce(?3, message_id), status = ?4"
            " WHERE email = ?1 AND attempt = ?2",
            rows,
        )

    def _write(self, statement: str, rows: Sequence[tuple]) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        self.db.executemany(statement, rows)
        self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()


class PostgresStore:
    """The tables in a Postgres database; each write one statement over arrays, committed."""

    def __init__(self, url: str) -> None:
        import psycopg2

        parts = make_url(url)
        self.db = psycopg2.connect(
            dbname=parts.database, user=parts.username, password=parts.password, host=parts.host, port=parts.port
        )
        self._execute(
            "CREATE TABLE IF NOT EXISTS yardstick_contacts (email text PRIMARY KEY, name text NOT NULL);"
            " CREATE TABLE IF NOT EXISTS yardstick_attempts (email text NOT NULL, attempt integer NOT NULL,"
            " message_id text, status text NOT NULL, PRIMARY KEY (email, attempt))"
        )

    def claim(self, contacts: list[tuple[str, str]]) -> list[tuple[str, str]]:
        emails, names = zip(*contacts, strict=True) if contacts else ((), ())
        return self._execute(
            "INSERT INTO yardstick_contacts (email, name) SELECT * FROM unnest(%s::text[], %s::text[])"
            " ON CONFLICT DO NOTHING RETURNING email, name",
            (list(emails), list(names)),
        )

    def start_attempts(self, attempts: list[tuple[str, int]]) -> None:
        emails, numbers = zip(*attempts, strict=True)
        self._execute(
            "INSERT INTO yardstick_attempts (email, attempt, status)"
            " SELECT email, attempt, 'sending' FROM unnest(%s::text[], %s::integer[]) AS a(email, attempt)",
            (list(emails), list(numbers)),
        )

    def record(self, rows: list[Recorded]) -> None:
        emails, numbers, ids, statuses = (list(column) for column in zip(*rows, strict=True))
        self._execute(
            "UPDATE yardstick_attempts t SET message_id = coalesce(r.message_id, t.message_id), status = r.status"
            " FROM unnest(%s::text[], %s::integer[], %s::text[], %s::text[]) AS r(email, attempt, message_id, status)"
            " WHERE t.email = r.email AND t.attempt = r.attempt",
            (emails, numbers, ids, statuses),
        )

    def _execute(self, statement: str, parameters: tuple = ()) -> list[tuple]:
        with self.db, self.db.cursor() as cursor:  # one transaction, committed on leaving
            cursor.execute(statement, parameters)
            return cursor.fetchall() if cursor.description else []

    def close(self) -> None:
        self.db.close()


class RecordsNothing:
    """``--records-nothing``: the store claims; attempts and outcomes are kept in memory only."""

    def __init__(self, store: SqliteStore | PostgresStore) -> None:
        self.claim, self.close = store.claim, store.close

    def start_attempts(self, attempts: list[tuple[str, int]]) -> None:
        pass

    def record(self, rows: list[Recorded]) -> None:
        pass


def open_store(ledger_url: str) -> SqliteStore | PostgresStore:
    parts = make_url(ledger_url)
    return SqliteStore(parts.database) if parts.get_backend_name() == "sqlite" else PostgresStore(ledger_url)


def parse(csv_path: Path, rejected_csv: Path) -> list[tuple[str, str]]:
    """The file's contacts as the package reads them (its rules: encoding, header, address checks,
    duplicates); the rejected rows to a CSV, as the package's parse writes them."""
    contacts = []
    with rejected_csv.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["line_no", "reason", "row"])
        for chunk in ContactReader(csv_path):
            contacts.extend((contact.email, contact.name) for contact in chunk.contacts)
            writer.writerows((r.line_no, r.reason, r.raw) for r in chunk.rejected)
    return contacts


async def deliver(
    contacts: list[tuple[str, str]], store, client: httpx.AsyncClient
) -> tuple[Counter, int, dict[str, float]]:
    """Every contact's messages until each has a final outcome: (final outcomes, messages sent, seconds of
    the first round's send and of the rest). ``client``: the provider's, at most CONNECTIONS connections."""
    gate = asyncio.Semaphore(CONNECTIONS)
    pending: dict[str, tuple[str, str, int]] = {}  # message id -> (email, name, attempt)
    final: Counter = Counter()
    sent = 0

    async def post(path: str, body) -> dict:
        async with gate:
            response = await client.post(path, json=body() if callable(body) else body)
            return response.raise_for_status().json()

    def messages(batch: Sequence[tuple[str, str, int]]) -> dict:  # built once a connection is free, not all at once
        return {
            "messages": [
                {"to": email, "subject": SUBJECT, "text": welcome_text(name),
                 "idempotency_key": idempotency_key(email, attempt)}
                for email, name, attempt in batch
            ]
        }  # fmt: skip

    async def send_round(items: list[tuple[str, str, int]]) -> None:
        nonlocal sent
        store.start_attempts([(email, attempt) for email, _, attempt in items])  # durable before the provider sees it
        batches = [items[i : i + BATCH] for i in range(0, len(items), BATCH)]
        replies = await asyncio.gather(*(post("/v1/messages/batch", lambda b=b: messages(b)) for b in batches))
        accepted: list[Recorded] = []
        for batch, reply in zip(batches, replies, strict=True):
            for (email, name, attempt), result in zip(batch, reply["results"], strict=True):
                if result.get("id"):
                    pending[result["id"]] = (email, name, attempt)
                    accepted.append((email, attempt, result["id"], "sent"))
                else:  # refused outright (an address the provider will not take): final, as a bounce
                    final["rejected"] += 1
                    accepted.append((email, attempt, None, "rejected"))
        sent += len(items)
        store.record(accepted)

    started = time.perf_counter()
    if contacts:
        await send_round([(email, name, 1) for email, name in contacts])
    first_round = time.perf_counter()
    while pending:
        await asyncio.sleep(POLL_SECONDS)
        ids = list(pending)
        answers = await asyncio.gather(
            *(post("/v1/messages/lookup", {"ids": ids[i : i + LOOKUP_BATCH]}) for i in range(0, len(ids), LOOKUP_BATCH))
        )
        outcomes: list[Recorded] = []
        resend = []
        for message in (m for answer in answers for m in answer["messages"]):
            status = message["status"]
            if status == "sent":  # still held
                continue
            email, name, attempt = pending.pop(message["id"])
            outcomes.append((email, attempt, None, status))
            if status == "blocked" and attempt < MAX_ATTEMPTS:
                resend.append((email, name, attempt + 1))
            else:
                final["failed" if status == "blocked" else status] += 1
        if outcomes:
            store.record(outcomes)
        if resend:
            await send_round(resend)
    return final, sent, {"send": first_round - started, "outcomes": time.perf_counter() - first_round}


def provider_client(esp_url: str, api_key: str, **options) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=esp_url,
        headers={"Authorization": f"Bearer {api_key}"},
        limits=httpx.Limits(max_connections=CONNECTIONS),
        timeout=60,
        **options,
    )


async def run(csv_path: Path, ledger_url: str, client: httpx.AsyncClient, workdir: Path, records_nothing: bool) -> dict:
    store = open_store(ledger_url)
    try:
        started = time.perf_counter()
        contacts = parse(csv_path, workdir / "rejected.csv")
        parsed = time.perf_counter()
        claimed = store.claim(contacts)
        phases = {"parse": parsed - started, "claim": time.perf_counter() - parsed}
        recorder = RecordsNothing(store) if records_nothing else store
        async with client:
            outcomes, sent, delivery = await deliver(claimed, recorder, client)
    finally:
        store.close()
    phases.update(delivery)
    return {
        "seconds": round(time.perf_counter() - started, 2),
        "phase_seconds": {phase: round(seconds, 2) for phase, seconds in phases.items()},
        "records": "nothing after the claim" if records_nothing else "every attempt and outcome",
        "contacts": len(claimed),
        "messages": sent,
        "outcomes": dict(outcomes),
    }


def arguments(doc: str) -> argparse.ArgumentParser:
    """The command line of the bench's programs (this one and include/bench/baseline_pipeline.py)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv", type=Path)
    parser.add_argument("--esp-url", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--ledger-url", help="SQLAlchemy URL of an empty database (default: a SQLite file)")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = arguments(__doc__)
    parser.add_argument("--records-nothing", action="store_true", help="record nothing after the claim")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="yardstick-") as tmp:
        ledger_url = args.ledger_url or f"sqlite:///{Path(tmp) / 'yardstick.db'}"
        client = provider_client(args.esp_url, args.api_key)
        print(json.dumps(asyncio.run(run(args.csv, ledger_url, client, Path(tmp), args.records_nothing))))


if __name__ == "__main__":
    main()
