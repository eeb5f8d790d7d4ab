"""Conversions are planned once each, however planning is split: after new events, new routes,
retried dead letters; the DuckDB store reads only the events stored since its last planning."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from cohortsync.engine import Engine
from cohortsync.store.outbox import CONVERSIONS, ConversionRoute
from cohortsync.sync.ledger import ledger_for
from tests.sync.conftest import MIN, SYNC_YAML, T0, track
from tests.sync.scripted import Remote


@pytest.fixture
def shop(shop_on_both: Engine) -> Engine:
    return shop_on_both


def orders(engine: Engine, people: range) -> list[str]:
    """Store one order per person; their message ids."""
    messages = [track(n, "order_completed", T0, revenue=5.0 * n) for n in people]
    engine.ingest_messages(messages)
    return [m["messageId"] for m in messages]


def queued(engine: Engine) -> list[tuple[str, str]]:
    """(destination, message id) of every conversion queued, in order."""
    rows = engine.store.query(  # type: ignore[attr-defined]
        "SELECT destination, message_id FROM conversion_outbox ORDER BY destination, message_id"
    )
    return [(str(d), str(m)) for d, m in rows]


def plan(engine: Engine, routes: Sequence[ConversionRoute], minutes: int = 0) -> int:
    return ledger_for(engine.store).plan_conversions(routes, T0 + minutes * MIN).conversions


def test_events_stored_after_a_planning_are_planned_next_and_none_twice(shop: Engine) -> None:
    routes = shop.sync_setup.conversion_routes  # order_completed -> ads
    first = orders(shop, range(3))
    assert plan(shop, routes) == 3
    assert plan(shop, routes, 1) == 0
    second = orders(shop, range(3, 5))
    shop.ingest_messages([track(9, "added_to_cart", T0)])  # not a conversion
    assert plan(shop, routes, 2) == 2
    assert plan(shop, routes, 3) == 0
    assert queued(shop) == sorted(("ads", m) for m in first + second)


def test_a_new_route_gets_every_stored_event(shop: Engine) -> None:
    routes = shop.sync_setup.conversion_routes
    sent = orders(shop, range(4))
    assert plan(shop, routes) == 4
    wider = [*routes, ConversionRoute("wh", "order_completed", "Purchase", "revenue", "USD")]
    assert plan(shop, wider, 1) == 4  # the warehouse's, for events planned before for ads
    assert plan(shop, wider, 2) == 0
    assert queued(shop) == sorted([("ads", m) for m in sent] + [("wh", m) for m in sent])


def test_retried_dead_conversions_are_planned_again(shop: Engine) -> None:
    routes = shop.sync_setup.conversion_routes
    orders(shop, range(3))
    assert plan(shop, routes) == 3
    outbox, now = ledger_for(shop.store), T0 + MIN
    batch = outbox.claim("ads", CONVERSIONS, 10, now)
    assert batch is not None and len(batch.records) == 3
    outbox.dead_letter(batch, "refused by the platform", now)
    assert queued(shop) == []
    orders(shop, range(3, 4))  # stored after the last planning, with the dead ones forgotten
    assert outbox.retry_dead("ads", None, now) == 3
    assert plan(shop, routes, 2) == 4
    assert plan(shop, routes, 3) == 0


def test_the_whole_log_is_read_again_every_ten_minutes(shop: Engine) -> None:
    routes = shop.sync_setup.conversion_routes
    first, *_ = orders(shop, range(2))
    assert plan(shop, routes) == 2
    # A ledger row gone by other means than a retry (say, restored from a backup without it):
    mark = "?" if shop.store.dialect == "duckdb" else "%s"
    for table in ("conversion_ledger", "conversion_outbox"):
        shop.store.query(f"DELETE FROM {table} WHERE message_id = {mark}", [first])  # type: ignore[attr-defined]
    assert plan(shop, routes, 10) + plan(shop, routes, 11) == 1
    assert [m for _, m in queued(shop)].count(first) == 1


def test_a_rule_matches_every_spelling_of_its_event(shop: Engine) -> None:
    # The rule says `order_completed`; Segment's spec names the event "Order Completed".
    spellings = ["Order Completed", "order_completed", "order completed", " ORDER-COMPLETED "]
    messages = [track(n, name, T0, revenue=10.0) for n, name in enumerate(spellings)]
    shop.ingest_messages([*messages, track(9, "Order Refunded", T0)])
    assert plan(shop, shop.sync_setup.conversion_routes) == len(spellings)
    assert queued(shop) == sorted(("ads", m["messageId"]) for m in messages)


def test_a_rule_in_the_spec_spelling_matches_the_snake_case_event(
    project_on_both: Path, remotes: dict[str, Remote]
) -> None:
    rules = SYNC_YAML.replace("{event: order_completed,", '{event: "Order Completed",')
    settings = project_on_both / "cohortsync.yml"
    settings.write_text(settings.read_text(encoding="utf-8") + rules, encoding="utf-8")
    with Engine.open(project_on_both) as engine:
        sent = orders(engine, range(2))
        assert plan(engine, engine.sync_setup.conversion_routes) == 2
        assert queued(engine) == sorted(("ads", m) for m in sent)
