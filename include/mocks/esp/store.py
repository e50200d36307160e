"""In-memory message store of the mock ESP: outcomes, holds, idempotency and the audit log.

Every accepted message draws its final outcome (delivered / bounced / blocked) and whether it is held
(stays ``sent`` for a while) from one seeded random generator, in acceptance order, so the same seed and
the same sequence of requests give the same outcomes. A message's status is derived from the clock: it is
``sent`` until its resolve time, then its outcome, and never changes again.

The store is used from one asyncio event loop (the app's endpoints are ``async def`` and never await while
touching it), so it needs no lock.
"""

from __future__ import annotations

import bisect
import json
import os
import random
import secrets
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

OUTCOMES = ("delivered", "bounced", "blocked")


@dataclass(frozen=True)
class OutcomeSettings:
    """How the store decides what happens to a message. Defaults reproduce the seed case study."""

    seed: int = 42
    delivered_rate: float = 0.8
    bounced_rate: float = 0.1
    blocked_rate: float = 0.1
    hold_rate: float = 0.1
    hold_min_seconds: float = 1.0
    hold_max_seconds: float = 5.0

    def __post_init__(self) -> None:
        rates = (self.delivered_rate, self.bounced_rate, self.blocked_rate)
        if any(rate < 0 for rate in rates) or abs(sum(rates) - 1.0) > 1e-6:
            raise ValueError(f"outcome rates must be >= 0 and add up to 1, got {rates}")
        if not 0 <= self.hold_rate <= 1:
            raise ValueError(f"hold_rate must be within [0, 1], got {self.hold_rate}")
        if not 0 <= self.hold_min_seconds <= self.hold_max_seconds:
            raise ValueError("hold seconds must satisfy 0 <= min <= max")


@dataclass(slots=True)
class Message:
    seq: int
    # The text its id starts with, one object shared by the messages of a process: the id is this and the
    # message's position in the log (``<prefix><seq:09d>``), built when asked for (~70 B a message less than
    # keeping each id). A journaled id of another form keeps it whole (``UnnumberedMessage``).
    id_prefix: str
    to: str
    subject: str
    text: str
    idempotency_key: str | None
    created_at: float
    resolve_at: float
    outcome: str
    # Extra headers the sender asked for (List-Unsubscribe, ...), as compact JSON: one string instead of a
    # dict of strings (~250 B a message less; every message of the stack has them).
    headers_json: str | None = None
    html: str | None = None  # the HTML body, when the sender gave one

    @property
    def id(self) -> str:
        return f"{self.id_prefix}{self.seq:09d}"

    def status(self, now: float) -> str:
        return self.outcome if now >= self.resolve_at else "sent"

    def updated_at(self, now: float) -> float:
        return self.resolve_at if now >= self.resolve_at else self.created_at

    def summary(self, now: float) -> dict:
        return {"id": self.id, "to": self.to, "status": self.status(now), "updated_at": _iso(self.updated_at(now))}

    def full(self, now: float) -> dict:
        return {
            "id": self.id,
            "to": self.to,
            "subject": self.subject,
            "text": self.text,
            "status": self.status(now),
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at(now)),
            "idempotency_key": self.idempotency_key,
            **({"headers": json.loads(self.headers_json)} if self.headers_json else {}),  # only when given
            **({"html": self.html} if self.html is not None else {}),
        }


@dataclass(slots=True)
class UnnumberedMessage(Message):
    """A journaled message whose id does not end in its position in the log (the id is kept whole)."""

    whole_id: str = ""

    @property
    def id(self) -> str:
        return self.whole_id


# A journal line: "id", these, then "headers" (and "html" when given).
JOURNALED_FIELDS = ("to", "subject", "text", "idempotency_key", "created_at", "resolve_at", "outcome")


def _journaled(seq: int, fields: dict) -> Message:
    """A message as read back from its journal line (its fields as ``MessageStore.accept`` wrote them)."""
    message_id = fields.pop("id")
    fields["subject"] = sys.intern(fields["subject"])
    fields["headers_json"] = _compact_json(fields.pop("headers", None))
    if _position(message_id) != seq:
        return UnnumberedMessage(seq=seq, id_prefix="", whole_id=message_id, **fields)
    return Message(seq=seq, id_prefix=sys.intern(message_id[:-9]), **fields)


class IdempotencyConflict(Exception):
    """The idempotency key was used before with a different payload."""


def _position(message_id: str) -> int | None:
    """The log position an id ends in (ids are ``<prefix><position:09d>``); None for any other string."""
    tail = message_id[-9:]
    return int(tail) if len(message_id) > 9 and tail.isdigit() else None


def _compact_json(headers: dict[str, str] | None) -> str | None:
    """A message's extra headers as kept in memory (``Message.headers_json``); None when there are none."""
    return json.dumps(headers, separators=(",", ":")) if headers else None


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat()


class MessageStore:
    """``journal``: a file every accepted message is appended to before the request is answered, and read
    back at start, so a restarted service still knows its messages (ids, idempotency keys, outcomes), as a
    real provider would. Without it the memory dies with the process.

    Memory: a million messages must fit in well under 1 GB (issue 14), so nothing is indexed twice: an id
    ends in its message's position in the log (no index by id, and no id kept: it is built from the
    process's prefix when asked for), a recipient with one message maps to its position (a list only for
    repeats), and the subject, the same for every message, is interned."""

    def __init__(self, settings: OutcomeSettings, clock=time.time, journal: Path | None = None) -> None:
        self.settings = settings
        self._clock = clock
        self._rng = random.Random(settings.seed)
        # A per-process prefix keeps ids of a restarted service from colliding with ids it gave out before.
        self._id_prefix = f"msg_{secrets.token_hex(4)}_"
        self._log: list[Message] = []
        self._by_key: dict[str, Message] = {}
        self._by_recipient: dict[str, int | list[int]] = {}  # positions in the log
        self._by_unnumbered_id: dict[str, Message] = {}  # journaled ids that do not end in their position
        self._journal = None
        if journal is not None:
            if journal.exists():
                complete = 0  # bytes of whole lines
                with journal.open("rb") as lines:
                    for line in lines:
                        if not line.endswith(b"\n"):  # cut short by a crash: never acknowledged
                            break
                        complete += len(line)
                        self._remember(_journaled(len(self._log), json.loads(line)))
                os.truncate(journal, complete)  # the next line must not continue the cut one
            self._journal = journal.open("a", encoding="utf-8")

    def __len__(self) -> int:
        return len(self._log)

    def now(self) -> float:
        return self._clock()

    def accept(
        self,
        to: str,
        subject: str,
        text: str,
        idempotency_key: str | None,
        headers: dict[str, str] | None = None,
        html: str | None = None,
    ) -> tuple[Message, bool]:
        """Accept a message, or return the one already accepted under this idempotency key.

        Returns ``(message, created)``. Raises IdempotencyConflict when the key was used for another payload.
        """
        if idempotency_key is not None:
            existing = self._by_key.get(idempotency_key)
            if existing is not None:
                if (existing.to, existing.subject, existing.text, existing.html) != (to, subject, text, html):
                    raise IdempotencyConflict(idempotency_key)
                return existing, False
        message = self._new_message(to, sys.intern(subject), text, idempotency_key)
        message.headers_json = _compact_json(headers)
        message.html = html
        self._remember(message)
        if self._journal is not None:
            fields = {"id": message.id}
            fields.update((f, getattr(message, f)) for f in JOURNALED_FIELDS)
            if html is not None:  # only when given: a journal of text-only messages stays as it was
                fields["html"] = html
            self._journal.write(json.dumps({**fields, "headers": headers or None}) + "\n")
            self._journal.flush()
        return message, True

    def known_key(self, idempotency_key: str | None) -> bool:
        """A message was accepted under this key (sending it again makes no new message)."""
        return idempotency_key is not None and idempotency_key in self._by_key

    def _remember(self, message: Message) -> None:
        self._log.append(message)
        if isinstance(message, UnnumberedMessage):
            self._by_unnumbered_id[message.id] = message
        earlier = self._by_recipient.setdefault(message.to, message.seq)
        if earlier != message.seq:
            if isinstance(earlier, int):
                self._by_recipient[message.to] = earlier = [earlier]
            earlier.append(message.seq)
        if message.idempotency_key is not None:
            self._by_key[message.idempotency_key] = message

    def _new_message(self, to: str, subject: str, text: str, idempotency_key: str | None) -> Message:
        s = self.settings
        draw = self._rng.random()
        if draw < s.delivered_rate:
            outcome = "delivered"
        elif draw < s.delivered_rate + s.bounced_rate:
            outcome = "bounced"
        else:
            outcome = "blocked"
        held = self._rng.random() < s.hold_rate
        hold = self._rng.uniform(s.hold_min_seconds, s.hold_max_seconds) if held else 0.0
        now = self.now()
        seq = len(self._log)
        resolve_at = now + hold if held else now  # the same float object when not held: 24 B a message
        return Message(seq, self._id_prefix, to, subject, text, idempotency_key, now, resolve_at, outcome)

    def get(self, message_id: str) -> Message | None:
        position = _position(message_id)
        if position is not None and position < len(self._log) and self._log[position].id == message_id:
            return self._log[position]
        return self._by_unnumbered_id.get(message_id)

    def page(
        self, *, cursor: int, limit: int, to: str | None = None, status: str | None = None
    ) -> tuple[list[Message], int | None]:
        """Messages in acceptance order from position ``cursor``; returns them and the next cursor or None."""
        now = self.now()
        found: list[Message] = []
        for message in self._candidates(cursor, to):
            if status is not None and message.status(now) != status:
                continue
            if len(found) == limit:
                return found, message.seq
            found.append(message)
        return found, None

    def _candidates(self, cursor: int, to: str | None) -> Iterator[Message]:
        if to is None:
            yield from (self._log[i] for i in range(cursor, len(self._log)))
            return
        positions = self._by_recipient.get(to, [])
        if isinstance(positions, int):
            positions = [positions]
        for position in positions[bisect.bisect_left(positions, cursor) :]:
            yield self._log[position]
