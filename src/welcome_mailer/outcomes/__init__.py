"""Outcome sources: how the pipeline learns what became of the messages it sent. One module per source.

Every source turns what it hears into ``OutcomeEvent``s (``events``); the ledger applies all of them with
one operation (``Ledger.record_outcomes``), and the delivery sensors wait on the ledger, not on a source.
Polling sources (an HTTP status lookup, a bounce mailbox) implement ``OutcomeSource`` and are polled by
the sensors; pushing sources (webhooks) call ``record_outcomes`` themselves.

To add a source: a module here producing ``OutcomeEvent``s, and, for a polling one, its place in
``welcome_mailer.hooks.esp.EspHook.outcome_sources``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # the ledger imports outcomes.events: no cycle at run time
    from welcome_mailer.vocabulary import OutcomeEvent, PendingMessage


class OutcomeSource(Protocol):
    name: str

    def poll(self, pending: Iterable[PendingMessage]) -> Iterable[OutcomeEvent]:
        """Outcomes for any of these accepted messages that the source knows now (others: nothing); the
        ledger records them in bounded chunks as they come, so a source may yield them as it reads.
        ``pending`` is read once, as a stream: it may be a whole run's size."""
        ...
