"""Event and property summaries kept by the DuckDB store equal what the event log says."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from cohortsync.engine import Engine
from cohortsync.store import duckdb_summaries
from cohortsync.store.duckdb_store import DuckDBStore

AT = datetime(2026, 3, 1, tzinfo=UTC)
_ids = iter(range(10**9))

# Per (stored profile, event): count, first and last timestamp, straight from the log.
FROM_LOG = """
    SELECT profile_id, event_key, count(*), min("timestamp"), max("timestamp") FROM events
    WHERE event_key IS NOT NULL GROUP BY ALL ORDER BY ALL
"""
FOLDED = """
    SELECT profile_id, event_key, sum(n)::BIGINT, min(first_ts), max(last_ts)
    FROM event_summaries GROUP BY ALL ORDER BY ALL
"""
# Per (stored profile, event, value): the same, from each row's JSON document.
VALUES_FROM_LOG = """
    SELECT profile_id, event_key, ? AS prop, v, count(*), min(ts), max(ts) FROM (
        SELECT profile_id, event_key, "timestamp" AS ts,
            CAST(json_extract(properties, ?) AS VARCHAR) AS v
        FROM events WHERE event_key = ?)
    WHERE v IS NOT NULL AND v <> 'null' GROUP BY ALL ORDER BY ALL
"""
VALUES_FOLDED = """
    SELECT profile_id, event_key, prop, value, sum(n)::BIGINT, min(first_ts), max(last_ts)
    FROM property_summaries WHERE event_key = ? AND prop = ? GROUP BY ALL ORDER BY ALL
"""


def message(user: str | None, event: str, ago: timedelta, **props: Any) -> dict[str, Any]:
    """A track call `ago` before AT, from a user or (user None) an anonymous visitor."""
    ids = {"userId": user} if user else {"anonymousId": "anon-1"}
    return {
        "type": "track",
        "messageId": f"s-{next(_ids):06d}",
        "event": event,
        "timestamp": (AT - ago).isoformat().replace("+00:00", "Z"),
        "properties": props,
        **ids,
    }


def orders(user: str | None, days: list[int], revenue: list[Any]) -> list[dict[str, Any]]:
    return [
        message(user, "order_completed", timedelta(days=d), revenue=r, discount=d % 2 == 0)
        for d, r in zip(days, revenue, strict=True)
    ]


@pytest.fixture
def shop(project_dir: Path) -> Iterator[Engine]:
    """An engine whose store holds orders and views of three people, ingested in batches."""
    with Engine.open(project_dir) as engine:
        engine.ingest_messages(orders("ann", [40, 30, 2], [10, 20.5, 20.5]))
        engine.ingest_messages(orders("bob", [50, 1], [7, "7"]))
        engine.ingest_messages([message(None, "product_viewed", timedelta(days=3))])
        engine.ingest_messages(orders(None, [3], [None]))
        yield engine


def store_of(engine: Engine) -> DuckDBStore:
    assert isinstance(engine.store, DuckDBStore)
    return engine.store


def assert_summaries_match(engine: Engine) -> None:
    """Every summary, folded per key, equals the aggregate of the stored rows."""
    store = store_of(engine)
    assert store.query(FOLDED) == store.query(FROM_LOG)
    for event, prop in store.query("SELECT event_key, prop FROM summarised_properties"):
        from_log = store.query(VALUES_FROM_LOG, [prop, f"/{prop}", event])
        assert store.query(VALUES_FOLDED, [event, prop]) == from_log
        assert from_log  # the comparison is not between two empty sets


def test_event_summaries_follow_ingest(shop: Engine) -> None:
    assert_summaries_match(shop)
    rows = store_of(shop).query(
        "SELECT sum(n) FROM event_summaries WHERE event_key = 'order_completed'"
    )
    assert rows == [(6,)]


def test_a_property_read_later_is_filled_from_the_log_then_kept(shop: Engine) -> None:
    store = store_of(shop)
    wanted = [("order_completed", "revenue", "/revenue"), ("order_completed", "discount",
              "/discount")]  # fmt: skip
    assert store.summarise_properties(wanted) == [
        ("order_completed", "discount"),
        ("order_completed", "revenue"),
    ]
    assert store.summarise_properties(wanted) == []  # already summarised
    assert_summaries_match(shop)
    # Values are kept by their JSON text: 7 and "7" differ, a null is left out.
    values = store.query(
        "SELECT value, sum(n)::BIGINT FROM property_summaries WHERE prop = 'revenue' "
        "GROUP BY ALL ORDER BY ALL"
    )
    assert values == [('"7"', 1), ("10", 1), ("20.5", 2), ("7", 1)]
    shop.ingest_messages(orders("ann", [1], [5]) + orders("cat", [9], [1e3]))
    assert_summaries_match(shop)


def test_merges_leave_summaries_under_the_stored_profile(shop: Engine) -> None:
    store = store_of(shop)
    store.summarise_properties([("order_completed", "revenue", "/revenue")])
    # The anonymous visitor identifies as ann: its profile is merged into ann's.
    shop.ingest_messages(
        [{"type": "identify", "messageId": "s-merge", "userId": "ann", "anonymousId": "anon-1",
          "timestamp": AT.isoformat().replace("+00:00", "Z"), "traits": {}}]
    )  # fmt: skip
    assert store.query("SELECT count(*) FROM profile_aliases") == [(1,)]
    assert_summaries_match(shop)


def test_compaction_folds_without_changing_totals(
    shop: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = store_of(shop)
    store.summarise_properties([("order_completed", "revenue", "/revenue")])
    monkeypatch.setattr(duckdb_summaries, "COMPACT_AT_LEAST", 0)
    for day in range(5):  # small batches, folded as they pile up
        shop.ingest_messages(orders("ann", [day], [day]))
        assert_summaries_match(shop)
    rows = store.query("SELECT count(*) FROM event_summaries")[0][0]
    pairs = store.query("SELECT count(DISTINCT (profile_id, event_key)) FROM event_summaries")
    assert rows > pairs[0][0]  # the last batch is not folded yet
    store.compact_summaries()
    assert store.query("SELECT count(*) FROM event_summaries") == pairs
    assert_summaries_match(shop)


def test_rebuild_after_events_written_in_sql(shop: Engine) -> None:
    store = store_of(shop)
    store.summarise_properties([("order_completed", "revenue", "/revenue")])
    path = store.path
    shop.close()
    con = duckdb.connect(str(path))
    con.execute(
        "INSERT INTO events SELECT * REPLACE (message_id || '~1' AS message_id, "
        "profile_id || '~1' AS profile_id) FROM events"
    )
    con.close()
    reopened = DuckDBStore(path)
    try:
        assert reopened.query(FOLDED) != reopened.query(FROM_LOG)
        reopened.rebuild_summaries()
        assert reopened.query(FOLDED) == reopened.query(FROM_LOG)
        prop = ["revenue", "/revenue", "order_completed"]
        assert reopened.query(VALUES_FOLDED, ["order_completed", "revenue"]) == reopened.query(
            VALUES_FROM_LOG, prop
        )
    finally:
        reopened.close()
