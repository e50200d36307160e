"""The HTTP status lookup as an outcome source: several lookups under way at once, answered in order."""

from __future__ import annotations

import threading
import time

import pytest

from welcome_mailer.outcomes.http_lookup import HttpLookupSource
from welcome_mailer.transports.http import MAX_BATCH
from welcome_mailer.vocabulary import PendingMessage


class SlowProvider:
    """Answers each lookup after a pause, and counts how many lookups were under way at once."""

    def __init__(self, statuses: dict[str, str], pause: float = 0.02) -> None:
        self.statuses, self.pause = statuses, pause
        self.asked: list[list[str]] = []
        self.under_way = self.most_under_way = 0
        self.lock = threading.Lock()

    def lookup(self, message_ids: list[str]) -> dict[str, str]:
        with self.lock:
            self.asked.append(list(message_ids))
            self.under_way += 1
            self.most_under_way = max(self.most_under_way, self.under_way)
        time.sleep(self.pause)
        with self.lock:
            self.under_way -= 1
        return {i: self.statuses[i] for i in message_ids if i in self.statuses}


def pending(count: int):
    return (PendingMessage(f"c{n}@example.com", 1, f"m{n}", None) for n in range(count))


def test_lookups_overlap_up_to_the_limit_and_outcomes_come_in_the_order_asked():
    count = 10 * MAX_BATCH + 7
    cycle = ["delivered", "sent", "bounced", "blocked"]  # "sent": held, no outcome yet
    provider = SlowProvider({f"m{n}": cycle[n % 4] for n in range(count)})
    events = list(HttpLookupSource(provider, lookups_in_flight=3).poll(pending(count)))

    assert provider.most_under_way == 3
    assert [len(ids) for ids in provider.asked] == [MAX_BATCH] * 10 + [7]
    assert sorted(i for ids in provider.asked for i in ids) == sorted(f"m{n}" for n in range(count))
    expected = [(f"m{n}", cycle[n % 4]) for n in range(count) if cycle[n % 4] != "sent"]
    assert [(e.provider_message_id, e.outcome) for e in events] == expected
    assert {e.source for e in events} == {"http_lookup"}


def test_one_lookup_at_a_time_when_told_so():
    provider = SlowProvider({f"m{n}": "delivered" for n in range(3 * MAX_BATCH)}, pause=0.005)
    assert len(list(HttpLookupSource(provider, lookups_in_flight=1).poll(pending(3 * MAX_BATCH)))) == 3 * MAX_BATCH
    assert provider.most_under_way == 1


def test_a_failed_lookup_fails_the_poll_and_asks_nothing_more_after_it():
    class Failing(SlowProvider):
        def lookup(self, message_ids):
            if message_ids[0] == f"m{2 * MAX_BATCH}":
                raise RuntimeError("the provider is down")
            return super().lookup(message_ids)

    provider = Failing({f"m{n}": "delivered" for n in range(20 * MAX_BATCH)}, pause=0.005)
    with pytest.raises(RuntimeError, match="the provider is down"):
        list(HttpLookupSource(provider, lookups_in_flight=2).poll(pending(20 * MAX_BATCH)))
    # asked ahead by no more than the lookups under way: the rest of the pending stream was never read
    assert len(provider.asked) <= 4


def test_a_consumer_that_stops_reading_stops_the_lookups():
    provider = SlowProvider({f"m{n}": "delivered" for n in range(20 * MAX_BATCH)}, pause=0.005)
    events = HttpLookupSource(provider, lookups_in_flight=2).poll(pending(20 * MAX_BATCH))
    assert next(events).provider_message_id == "m0"
    events.close()
    assert len(provider.asked) <= 3
