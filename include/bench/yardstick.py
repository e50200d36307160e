"""The lean durable program, `make bench`'s yardstick (issue 34): the package's job without orchestration.

    python -m include.bench.yardstick FILE --esp-url URL --api-key KEY [--ledger-url URL]
        [--records-nothing | --ledger-schema [--contacts-written-once]]

One asyncio process. It reads the file with the package's own parser (welcome_mailer.contacts: the same
contacts, the same rejected rows, written to a CSV) and claims them with one insert-or-skip into a table of
its own. Then, round after round, it writes the round's attempts (one row per email and attempt number: the
provider's idempotency key is made of them) in one bulk statement committed before anything is sent; sends
500-message batches over 16 connections; records the accepted ids in one bulk UPDATE; polls outcomes every
0.3 s (the provider's lookup endpoint) and records each poll's in one bulk UPDATE; and resends blocked
contacts at once as a new attempt, up to the DAG's 5 messages a contact. Bounced is never retried.

Its tables are its own (yardstick_contacts, yardstick_attempts; ``--ledger-schema``: the package's), in a
SQLite file or in the Postgres database ``--ledger-url`` names. A bulk statement is, on Postgres, one
statement over arrays (unnest); on SQLite, the claim one INSERT ... SELECT over a JSON array, the other
writes one prepared statement executed over every row (executemany), which was as fast as a JSON array
there (1M rows: 3-4 s each way).

``--records-nothing``: the same program, but nothing is recorded after the claim (attempts and outcomes
stay in memory): the bench's no-ledger baseline; its time against the yardstick's is what durability costs.

``--ledger-schema``: the same program writing the package's ledger tables instead of its own (made by the
package's migrations, every index included), the rows the ledger writes per message, each step one bulk
statement: the floor the ledger's schema sets. It leaves out two writes the DAG makes to a resent contact
(blocked -> claimed with its batch renumbered, before it is sent again; blocked -> failed at close-out,
here one write). ``--contacts-written-once``: with it, each contact's row written at its claim only (its
state would be read from its attempts): what that schema change could gain at most.

Prints one JSON line: seconds per phase, contacts, messages sent and final outcomes.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import sqlite3
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
from sqlalchemy.engine import make_url

from welcome_mailer.contacts import ContactReader
from welcome_mailer.greeting import SUBJECT, welcome_text
from welcome_mailer.ledger.bulk import sqlite_value
from welcome_mailer.ledger.engine import sqlite_bulk_cache
from welcome_mailer.ledger.queries import batch_size_for
from welcome_mailer.vocabulary import idempotency_key, utcnow

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
        self.create_tables()

    def create_tables(self) -> None:
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
        self.create_tables()

    def create_tables(self) -> None:
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
        with self.transaction() as cursor:
            cursor.execute(statement, parameters)
            return cursor.fetchall() if cursor.description else []

    @contextmanager
    def transaction(self) -> Iterator:
        """One transaction, committed on leaving, whose joins of given rows to a table go through the
        table's key, as the ledger's bulk updates do (bulk.update_rows): on tables loaded in bulk moments
        ago, with no statistics yet, the planner may otherwise read a whole table into a hash per chunk."""
        with self.db, self.db.cursor() as cursor:
            cursor.execute("SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off")
            yield cursor

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


LEDGER_RUN = "yardstick"  # --ledger-schema: the run id of every row written into the ledger's tables
SEND_TASKS = 8  # the DAG's max_send_tasks default: a large run's contacts are numbered into this many batches
MIN_CONTACTS_PER_SEND_TASK = 10_000  # the DAG's min_contacts_per_send_task default
ATTEMPT_STATES = {"rejected": "refused"}  # the yardstick's word -> the ledger's, where they differ


def ledger_tables(ledger_url: str) -> None:
    """The package's ledger tables in this database, made by its own migrations: every index its pages,
    webhooks, polls and claims read."""
    from welcome_mailer.ledger import connect
    from welcome_mailer.ledger.migrate import upgrade

    engine = connect(ledger_url)
    upgrade(engine)
    engine.dispose()


def contact_state(outcome: str, attempt: int) -> str:
    """The contact's state after its attempt's outcome, as the ledger keeps it (rules.py): blocked on its last
    allowed attempt is failed; refused by the provider is closed as bounced."""
    if outcome == "rejected":
        return "bounced"
    return "failed" if outcome == "blocked" and attempt >= MAX_ATTEMPTS else outcome


def claim_batch_size(contacts: int) -> int:
    """Contacts per batch as the ledger's claim numbers them with the DAG's defaults (queries.batch_size_for)."""
    return batch_size_for(contacts, BATCH, SEND_TASKS, MIN_CONTACTS_PER_SEND_TASK)


def ledger_now() -> str:
    """Now as SQLAlchemy writes a DateTime into SQLite, which the ledger's columns hold."""
    return sqlite_value(utcnow())


def staged_rows(contacts: list[tuple[str, str]]) -> list[tuple[str, str, str, int]]:
    """The parse task's rows for staged_contacts, in key order as the ledger stages them (neighbouring index
    pages); a contact's line number is its place in the file's valid contacts."""
    return sorted((LEDGER_RUN, email, name, line) for line, (email, name) in enumerate(contacts, 1))


def split_recorded(rows: list[Recorded], now) -> tuple[list[tuple], list[tuple], list[tuple]]:
    """A record's rows as the ledger writes them: (message id, now, email, attempt) of the accepted
    attempts; (state, now, email, attempt) of the attempts with an outcome; (state, now, email) of their
    contacts."""
    accepted = [(message_id, now, email, attempt) for email, attempt, message_id, _ in rows if message_id]
    finished = [(email, attempt, status) for email, attempt, message_id, status in rows if not message_id]
    attempts = [(ATTEMPT_STATES.get(status, status), now, email, attempt) for email, attempt, status in finished]
    contacts = [(contact_state(status, attempt), now, email) for email, attempt, status in finished]
    return accepted, attempts, contacts


class OnLedgerTables:
    """A store on the package's ledger tables, made by its migrations before it connects (ledger_tables).
    ``contact_updates=False``: each contact's row is written once, at its claim (its state would be read
    from its attempts)."""

    def __init__(self, target: str, contact_updates: bool = True) -> None:
        self.contact_updates = contact_updates
        super().__init__(target)

    def create_tables(self) -> None:
        pass

    def start_attempts(self, attempts: list[tuple[str, int]]) -> None:
        resent = [(email, attempt) for email, attempt in attempts if attempt > 1]  # the first: claimed with it
        if resent:
            self.resend(resent)

    def resend(self, attempts: list[tuple[str, int]]) -> None:
        """Blocked contacts' new attempts, and their contacts sending again (``contact_updates``)."""
        raise NotImplementedError


class SqliteLedgerStore(OnLedgerTables, SqliteStore):
    """``--ledger-schema`` on SQLite: the same program writing the package's own tables as the ledger does
    per message (its row staged by the parse; the contact and its first attempt; the attempt's message id;
    its outcome; the contact's state), each step one bulk statement as the yardstick's own writes."""

    def claim(self, contacts: list[tuple[str, str]]) -> list[tuple[str, str]]:
        now = ledger_now()
        with sqlite_bulk_cache(self.db):
            self._write(
                "INSERT INTO staged_contacts (run_id, email, name, line_no) VALUES (?, ?, ?, ?)", staged_rows(contacts)
            )
            self.db.execute("BEGIN IMMEDIATE")
            claimed = self.db.execute(
                "INSERT INTO sent_contacts (email, name, status, attempts, claim_attempts, run_id, created_at,"
                " updated_at, source_line, batch_no) SELECT email, name, 'sending', 1, 1, ?1, ?2, ?2, line_no,"
                " (row_number() OVER (ORDER BY email) - 1) / ?3 FROM staged_contacts WHERE run_id = ?1"
                " ORDER BY email ON CONFLICT DO NOTHING RETURNING email, name",
                (LEDGER_RUN, now, claim_batch_size(len(contacts))),
            ).fetchall()
            # Their first attempts from the rows just inserted, the key made inside the database, as the
            # ledger's claim makes them (in one statement, no million rows bound from Python).
            self.db.create_function("welcome_idempotency_key", 2, idempotency_key, deterministic=True)
            self.db.execute(
                "INSERT INTO send_attempts (email, attempt, idempotency_key, run_id, status, created_at, updated_at)"
                " SELECT email, 1, welcome_idempotency_key(email, 1), run_id, 'pending', ?2, ?2 FROM sent_contacts"
                " WHERE run_id = ?1 AND status = 'sending' AND created_at = ?2",
                (LEDGER_RUN, now),
            )
            self.db.execute("COMMIT")
        return claimed

    def resend(self, resent: list[tuple[str, int]]) -> None:
        now = ledger_now()
        with sqlite_bulk_cache(self.db):
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany(
                "INSERT INTO send_attempts (email, attempt, idempotency_key, run_id, status, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, 'pending', ?, ?)",
                [(email, attempt, idempotency_key(email, attempt), LEDGER_RUN, now, now) for email, attempt in resent],
            )
            if self.contact_updates:
                self.db.executemany(
                    "UPDATE sent_contacts SET status = 'sending', attempts = ?2, claim_attempts = ?2, updated_at = ?3"
                    " WHERE email = ?1",
                    [(email, attempt, now) for email, attempt in resent],
                )
            self.db.execute("COMMIT")

    def record(self, rows: list[Recorded]) -> None:
        accepted, attempts, contacts = split_recorded(rows, ledger_now())
        self.db.execute("BEGIN IMMEDIATE")
        self.db.executemany(
            "UPDATE send_attempts SET provider_message_id = ?, status = 'sent', updated_at = ?"
            " WHERE email = ? AND attempt = ?",
            accepted,
        )
        self.db.executemany(
            "UPDATE send_attempts SET status = ?, updated_at = ? WHERE email = ? AND attempt = ?", attempts
        )
        if self.contact_updates:
            self.db.executemany("UPDATE sent_contacts SET status = ?, updated_at = ? WHERE email = ?", contacts)
        self.db.execute("COMMIT")

    def close(self) -> None:
        if not self.db.in_transaction:  # not after a write that raised: its error is the one to see
            self._write("DELETE FROM staged_contacts WHERE run_id = ?", [(LEDGER_RUN,)])  # as the run's end does
        super().close()


class PostgresLedgerStore(OnLedgerTables, PostgresStore):
    """``--ledger-schema`` on Postgres: SqliteLedgerStore's writes, each one statement over arrays, the
    staged rows loaded with COPY as the ledger loads them (bulk.load_rows)."""

    def claim(self, contacts: list[tuple[str, str]]) -> list[tuple[str, str]]:
        now = utcnow()
        staged = io.StringIO()
        csv.writer(staged).writerows(staged_rows(contacts))
        staged.seek(0)
        with self.transaction() as cursor:  # a name may be empty: '' is not NULL
            cursor.copy_expert(
                "COPY staged_contacts (run_id, email, name, line_no)"
                " FROM STDIN WITH (FORMAT csv, FORCE_NOT_NULL (name))",
                staged,
            )
        with self.transaction() as cursor:  # the contacts and their first attempts: one transaction
            cursor.execute(
                "INSERT INTO sent_contacts (email, name, status, attempts, claim_attempts, run_id, created_at,"
                " updated_at, source_line, batch_no) SELECT email, name, 'sending', 1, 1, %(run)s, %(now)s, %(now)s,"
                " line_no, (row_number() OVER (ORDER BY email) - 1) / %(size)s FROM staged_contacts"
                " WHERE run_id = %(run)s ORDER BY email ON CONFLICT DO NOTHING RETURNING email, name",
                {"run": LEDGER_RUN, "now": now, "size": claim_batch_size(len(contacts))},
            )
            claimed = cursor.fetchall()
            cursor.execute(  # their first attempts, the key made by Postgres, as the ledger's claim makes them
                "INSERT INTO send_attempts (email, attempt, idempotency_key, run_id, status, created_at, updated_at)"
                " SELECT email, 1, 'welcome-' || left(encode(sha256(convert_to(email, 'UTF8')), 'hex'), 40) || '-1',"
                " run_id, 'pending', %(now)s, %(now)s FROM sent_contacts"
                " WHERE run_id = %(run)s AND status = 'sending' AND created_at = %(now)s",
                {"run": LEDGER_RUN, "now": now},
            )
        return claimed

    def resend(self, resent: list[tuple[str, int]]) -> None:
        now = utcnow()
        emails, numbers = (list(column) for column in zip(*resent, strict=True))
        with self.transaction() as cursor:
            cursor.execute(
                "INSERT INTO send_attempts (email, attempt, idempotency_key, run_id, status, created_at, updated_at)"
                " SELECT email, attempt, key, %s, 'pending', %s, %s"
                " FROM unnest(%s::text[], %s::integer[], %s::text[]) AS a(email, attempt, key)",
                (LEDGER_RUN, now, now, emails, numbers, [idempotency_key(e, n) for e, n in resent]),
            )
            if self.contact_updates:
                cursor.execute(
                    "UPDATE sent_contacts c SET status = 'sending', attempts = r.attempt, claim_attempts = r.attempt,"
                    " updated_at = %s FROM unnest(%s::text[], %s::integer[]) AS r(email, attempt)"
                    " WHERE c.email = r.email",
                    (now, emails, numbers),
                )

    def record(self, rows: list[Recorded]) -> None:
        now = utcnow()
        accepted, attempts, contacts = split_recorded(rows, now)
        with self.transaction() as cursor:
            if accepted:
                ids, _, emails, numbers = (list(column) for column in zip(*accepted, strict=True))
                cursor.execute(
                    "UPDATE send_attempts t SET provider_message_id = r.id, status = 'sent', updated_at = %s"
                    " FROM unnest(%s::text[], %s::integer[], %s::text[]) AS r(email, attempt, id)"
                    " WHERE t.email = r.email AND t.attempt = r.attempt",
                    (now, emails, numbers, ids),
                )
            if attempts:
                states, _, emails, numbers = (list(column) for column in zip(*attempts, strict=True))
                cursor.execute(
                    "UPDATE send_attempts t SET status = r.status, updated_at = %s"
                    " FROM unnest(%s::text[], %s::integer[], %s::text[]) AS r(email, attempt, status)"
                    " WHERE t.email = r.email AND t.attempt = r.attempt",
                    (now, emails, numbers, states),
                )
            if attempts and self.contact_updates:
                states, _, emails = (list(column) for column in zip(*contacts, strict=True))
                cursor.execute(
                    "UPDATE sent_contacts c SET status = r.status, updated_at = %s"
                    " FROM unnest(%s::text[], %s::text[]) AS r(email, status) WHERE c.email = r.email",
                    (now, emails, states),
                )

    def close(self) -> None:
        self._execute("DELETE FROM staged_contacts WHERE run_id = %s", (LEDGER_RUN,))  # as the run's end does
        super().close()


def open_store(
    ledger_url: str, ledger_schema: bool = False, contact_updates: bool = True
) -> SqliteStore | PostgresStore:
    """The program's tables in this database: its own, or with ``ledger_schema`` the package's (migrated
    here first)."""
    parts = make_url(ledger_url)
    sqlite = parts.get_backend_name() == "sqlite"
    if not ledger_schema:
        return SqliteStore(parts.database) if sqlite else PostgresStore(ledger_url)
    ledger_tables(ledger_url)
    return (
        SqliteLedgerStore(parts.database, contact_updates)
        if sqlite
        else PostgresLedgerStore(ledger_url, contact_updates)
    )


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


def tables_written(ledger_schema: bool, contact_updates: bool) -> str:
    if not ledger_schema:
        return "its own"
    return "the ledger's" if contact_updates else "the ledger's, each contact's row written at its claim only"


async def run(
    csv_path: Path,
    ledger_url: str,
    client: httpx.AsyncClient,
    workdir: Path,
    records_nothing: bool,
    ledger_schema: bool = False,
    contact_updates: bool = True,
) -> dict:
    store = open_store(ledger_url, ledger_schema, contact_updates)  # its tables made before the clock starts
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
        "tables": tables_written(ledger_schema, contact_updates),
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
    recording = parser.add_mutually_exclusive_group()
    recording.add_argument("--records-nothing", action="store_true", help="record nothing after the claim")
    recording.add_argument(
        "--ledger-schema", action="store_true",
        help="write the package's ledger tables (made by its migrations), every row the ledger writes per message",
    )  # fmt: skip
    parser.add_argument(
        "--contacts-written-once", action="store_true",
        help="with --ledger-schema: a contact's row written at its claim only, its state left to its attempts",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.contacts_written_once and not args.ledger_schema:
        parser.error("--contacts-written-once needs --ledger-schema")
    with tempfile.TemporaryDirectory(prefix="yardstick-") as tmp:
        ledger_url = args.ledger_url or f"sqlite:///{Path(tmp) / 'yardstick.db'}"
        client = provider_client(args.esp_url, args.api_key)
        result = run(
            args.csv, ledger_url, client, Path(tmp), args.records_nothing, args.ledger_schema,
            contact_updates=not args.contacts_written_once,
        )  # fmt: skip
        print(json.dumps(asyncio.run(result)))


if __name__ == "__main__":
    main()
