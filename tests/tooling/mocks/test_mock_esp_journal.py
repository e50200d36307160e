"""The mock ESP's journal: a restarted mock still knows its messages, as a real provider would."""

from __future__ import annotations

import json

from include.mocks.esp.store import MessageStore, OutcomeSettings


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


def test_a_store_restarted_after_a_crash_mid_line_still_reads_every_later_message(tmp_path):
    journal = tmp_path / "messages.jsonl"
    first, _ = MessageStore(OutcomeSettings(), journal=journal).accept("ann@example.com", "Welcome!", "Hi Ann", "k1")
    with journal.open("a") as handle:
        handle.write('{"id": "cut short by a crash"')
    second, _ = MessageStore(OutcomeSettings(), journal=journal).accept("bob@example.com", "Welcome!", "Hi Bob", "k2")

    third = MessageStore(OutcomeSettings(), journal=journal)
    assert (
        len(third) == 2 and third.get(first.id).to == "ann@example.com" and third.get(second.id).to == "bob@example.com"
    )


def test_journaled_ids_that_do_not_end_in_their_position_are_still_found(tmp_path):
    """Ids end in the message's position in the log, which spares an index by id; a journal line whose
    id does not (written by another version, or by hand) is still found."""
    journal = tmp_path / "messages.jsonl"
    fields = {"to": "ann@example.com", "subject": "Welcome!", "text": "Hi Ann", "idempotency_key": "k1",
              "created_at": 1.0, "resolve_at": 1.0, "outcome": "bounced"}  # fmt: skip
    with journal.open("w") as handle:
        handle.write(json.dumps({"id": "legacy-7", **fields}) + "\n")
        handle.write(json.dumps({"id": "msg_00000000_000000005", **fields, "idempotency_key": "k2"}) + "\n")
    store = MessageStore(OutcomeSettings(), journal=journal)
    assert store.get("legacy-7").outcome == "bounced"
    assert store.get("msg_00000000_000000005").idempotency_key == "k2"
    assert store.get("msg_00000000_000000001") is None and store.get("7") is None


def test_a_restarted_store_still_shows_the_headers_it_was_given(tmp_path):
    journal = tmp_path / "messages.jsonl"
    headers = {
        "List-Unsubscribe": "<https://example.com/u?token=t1>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
    sent, _ = MessageStore(OutcomeSettings(), journal=journal).accept(
        "ann@example.com", "Welcome!", "Hi", "k1", headers
    )
    plain, _ = MessageStore(OutcomeSettings(), journal=journal).accept("bob@example.com", "Welcome!", "Hi", "k2")
    again = MessageStore(OutcomeSettings(), journal=journal)
    assert again.get(sent.id).full(0)["headers"] == headers
    assert "headers" not in again.get(plain.id).full(0)


def test_ids_are_built_from_one_shared_prefix_and_journaled_whole(tmp_path):
    """A million messages must fit in the mock's memory goal: a message keeps no id string of its own, only
    the process's prefix (one object) and its position; its journal line still holds the whole id."""
    journal = tmp_path / "messages.jsonl"
    store = MessageStore(OutcomeSettings(), journal=journal)
    ann, _ = store.accept("ann@example.com", "Welcome!", "Hi Ann", "k1")
    bob, _ = store.accept("bob@example.com", "Welcome!", "Hi Bob", "k2")
    assert ann.id_prefix is bob.id_prefix and ann.id.startswith(ann.id_prefix) and ann.id != bob.id
    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    assert [line["id"] for line in lines] == [ann.id, bob.id]
    assert list(lines[0]) == [
        "id",
        "to",
        "subject",
        "text",
        "idempotency_key",
        "created_at",
        "resolve_at",
        "outcome",
        "headers",
    ]

    again = MessageStore(OutcomeSettings(), journal=journal)
    assert again.get(ann.id).id == ann.id and again.get(bob.id).to == "bob@example.com"
    assert again.get(ann.id).id_prefix is again.get(bob.id).id_prefix
