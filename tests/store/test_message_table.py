"""A batch built as an Arrow table reads back as the messages it holds, for any store."""

from __future__ import annotations

from cohortsync.store.message_table import MessageTable, messages_table, remap_profiles
from cohortsync.store.records import Message

MESSAGES = [
    Message(
        "m1",
        "track",
        "web",
        1_780_000_000_000_000,
        1_780_000_000_000_000,
        1_780_000_000_500_000,
        sent_at_us=1_780_000_000_100_000,
        event="Order Completed",
        event_key="order_completed",
        user_id="u1",
        properties={"revenue": 19.5, "items": [{"sku": "A"}]},
        context={"traits": {"email": "a@example.com"}},
    ),
    Message(
        "m2",
        "alias",
        "file:x.jsonl",
        0,
        0,
        1,
        user_id="u2",
        previous_id="a2",
        traits={},
        integrations={"All": False},
    ),
]


def test_a_message_table_reads_back_as_its_messages_and_their_profiles() -> None:
    table = MessageTable(messages_table(MESSAGES, ["p1", "p2"]))

    assert len(table) == 2
    assert list(table) == MESSAGES
    assert table[1] == MESSAGES[1]
    assert table[-1] == MESSAGES[1]
    assert list(table.profile_ids) == ["p1", "p2"]
    assert table.profile_ids[-1] == "p2"


def test_merged_away_profiles_are_replaced_by_their_survivor() -> None:
    table = messages_table(MESSAGES, ["p1", "p2"])

    remapped = remap_profiles(table, {"p2": "p9"})

    assert remapped.column("profile_id").to_pylist() == ["p1", "p9"]
    assert remap_profiles(table, {}) is table
