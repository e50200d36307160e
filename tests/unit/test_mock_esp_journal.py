"""The mock ESP's journal: a restarted mock still knows its messages, as a real provider would."""

from __future__ import annotations

from include.mock_esp.store import MessageStore, OutcomeSettings


def test_a_restarted_store_knows_its_messages_and_their_keys(tmp_path):
    journal = tmp_path / "messages.jsonl"
    first = MessageStore(OutcomeSettings(), journal=journal)
    sent, created = first.accept("ann@example.com", "Welcome!", "Hi Ann, Welcome!", "k1")
    assert created
    with journal.open("a") as handle:
        handle.write('{"id": "cut short by a crash"')  # never acknowledged: ignored

    again = MessageStore(OutcomeSettings(), journal=journal)
    same, created = again.accept("ann@example.com", "Welcome!", "Hi Ann, Welcome!", "k1")
    assert not created and same.id == sent.id and again.get(sent.id).outcome == sent.outcome
    other, created = again.accept("bob@example.com", "Welcome!", "Hi Bob, Welcome!", "k2")
    assert created and other.id != sent.id and len(again) == 2
