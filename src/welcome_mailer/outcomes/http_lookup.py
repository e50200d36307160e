"""Outcomes from a provider's HTTP status lookup (the mock ESP's contract v1: POST /v1/messages/lookup)."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from welcome_mailer.settings import DEFAULT_REQUESTS_IN_FLIGHT
from welcome_mailer.transports.http import MAX_BATCH, HttpEmailProvider
from welcome_mailer.vocabulary import OUTCOMES, OutcomeEvent, PendingMessage


class HttpLookupSource:
    name = "http_lookup"

    def __init__(self, client: HttpEmailProvider, lookups_in_flight: int = DEFAULT_REQUESTS_IN_FLIGHT) -> None:
        self.client = client
        self.lookups_in_flight = lookups_in_flight

    def poll(self, pending: Iterable[PendingMessage]) -> Iterator[OutcomeEvent]:
        """Yields as it looks up, so the ledger records each answer while later lookups are under way.

        The provider answers at most MAX_BATCH ids a request; ``lookups_in_flight`` requests are under way
        at once (the client's connection pool is shared by threads), answered in the order asked.
        ``pending`` is read here, in the caller's thread, a request's worth ahead of the answers."""
        pending = iter(pending)
        in_flight: deque[tuple[dict[str, PendingMessage], Future[dict[str, str]]]] = deque()
        with ThreadPoolExecutor(max_workers=self.lookups_in_flight, thread_name_prefix="esp-lookup") as lookups:
            try:
                while asked := {m.message_id: m for m in itertools.islice(pending, MAX_BATCH)}:
                    in_flight.append((asked, lookups.submit(self.client.lookup, list(asked))))
                    if len(in_flight) >= self.lookups_in_flight:
                        yield from self._events(*in_flight.popleft())
                while in_flight:
                    yield from self._events(*in_flight.popleft())
            finally:
                for _, request in in_flight:  # the caller stopped reading, or a lookup failed
                    request.cancel()

    def _events(self, asked: dict[str, PendingMessage], answer: Future[dict[str, str]]) -> Iterator[OutcomeEvent]:
        return (
            OutcomeEvent(status, provider_message_id=message_id, source=self.name, polled=asked.get(message_id))
            for message_id, status in answer.result().items()
            if status in OUTCOMES  # "sent": no outcome yet
        )
