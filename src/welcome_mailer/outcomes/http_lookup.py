"""Outcomes from a provider's HTTP status lookup (the mock ESP's contract v1: POST /v1/messages/lookup)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

from welcome_mailer.transports.http import MAX_BATCH, HttpEmailProvider
from welcome_mailer.vocabulary import OUTCOMES, OutcomeEvent, PendingMessage


class HttpLookupSource:
    name = "http_lookup"

    def __init__(self, client: HttpEmailProvider) -> None:
        self.client = client

    def poll(self, pending: Iterable[PendingMessage]) -> Iterator[OutcomeEvent]:
        """Yields as it looks up, so the ledger records each chunk while later lookups are still to come."""
        pending = iter(pending)
        # the provider answers at most MAX_BATCH ids a request
        while message_ids := [m.message_id for m in itertools.islice(pending, MAX_BATCH)]:
            statuses = self.client.lookup(message_ids)
            yield from (
                OutcomeEvent(status, provider_message_id=message_id, source=self.name)
                for message_id, status in statuses.items()
                if status in OUTCOMES  # "sent": no outcome yet
            )
