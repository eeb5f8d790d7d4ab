"""The parts of the rules the mistakes project does not reach: suppression lists refreshed on
a cadence, discounts to no-discount segments and suppression lists, and what counts as intent
and as purchase suppression."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cohortsync.engine import Engine
from tests.conftest import PROJECT_YAML

DESTINATIONS = """\
destinations:
  ads: {type: files, path: exports, platform: meta}
  warehouse: {type: warehouse, url: "duckdb:///.cohortsync/warehouse.duckdb"}
"""


def documented(name: str, body: str) -> str:
    return f"  {name}:\n{body}    owner: crm@shop.example\n    description: {name}.\n"


def lint(tmp_path: Path, text: str, messages: Iterator[dict[str, Any]] | None = None) -> list[Any]:
    (tmp_path / "cohortsync.yml").write_text(PROJECT_YAML + text + DESTINATIONS, "utf-8")
    with Engine.open(tmp_path) as engine:
        if messages is not None:
            engine.ingest_messages(messages)
            engine.compute()
        return [r.finding for r in engine.lint().findings]


def test_a_purchase_suppression_list_sent_to_ads_on_a_cadence_is_cs102(tmp_path: Path) -> None:
    text = (
        "segments:\n  buyers: {any: [{event: order_completed, within: 7d}, {event: refund}]}\n"
        "audiences:\n"
        + documented(
            "cio_buyers",
            "    segment: buyers\n    refresh: 1h\n    destinations: [ads, warehouse]\n",
        )
    )
    (finding,) = [f for f in lint(tmp_path, text) if f.code == "CS102"]
    assert finding.audience == "cio_buyers"
    assert "purchase suppression list sent to ads but refreshed every 1h" in finding.message
    assert finding.fix == "set refresh: realtime on cio_buyers"
    realtime = text.replace("refresh: 1h", "refresh: realtime")
    assert not [f for f in lint(tmp_path, realtime) if f.code == "CS102"]


def test_intent_means_browse_or_cart_without_an_order_behind_it(tmp_path: Path) -> None:
    text = (
        "segments:\n"
        "  carted: {event: added_to_cart, within: 1d}\n"
        "  replenish:\n    all: [{event: added_to_cart, within: 30d}, "
        "{event: order_completed, within: 30d}]\n"
        "  engaged: {any: [{event: product_viewed, within: 7d}, {event: email_opened}]}\n"
        "  buyers: {event: order_completed, within: 7d}\n"
        "audiences:\n"
        + documented("cio_carted", "    segment: carted\n    refresh: realtime\n"
                     "    destinations: [ads, warehouse]\n")
        + documented("cio_replenish", "    segment: replenish\n    refresh: realtime\n"
                     "    destinations: [ads, warehouse]\n")
        + documented("cio_engaged", "    segment: engaged\n    refresh: realtime\n"
                     "    destinations: [ads, warehouse]\n")
        + documented("cio_carted_warehouse", "    segment: carted\n"
                     "    destinations: [warehouse]\n")
    )  # fmt: skip
    flagged = [f.audience for f in lint(tmp_path, text) if f.code == "CS101"]
    assert flagged == ["cio_carted"]
    excluded = text.replace(
        "    segment: carted\n    refresh: realtime\n",
        "    segment: carted\n    exclude: [buyers]\n    refresh: realtime\n",
    )
    assert not [f for f in lint(tmp_path, excluded) if f.code == "CS101"]
    # An exclusion that lets some buyers through (only big orders) is no suppression.
    partial = excluded.replace(
        "  buyers: {event: order_completed, within: 7d}",
        "  buyers: {event: order_completed, within: 7d, where: {revenue: {gt: 100}}}",
    )
    assert [f.audience for f in lint(tmp_path, partial) if f.code == "CS101"] == ["cio_carted"]


def shoppers() -> Iterator[dict[str, Any]]:
    at = (datetime.now(UTC) - timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    for n in range(10):
        events = ["g_promo"] + (["g_vip"] if n < 3 else []) + (["order_completed"] if n > 7 else [])
        base = {"anonymousId": f"r{n}", "timestamp": at}
        yield {**base, "type": "identify", "messageId": f"r-i{n}",
               "traits": {"email": f"r{n}@example.com"}}  # fmt: skip
        for i, event in enumerate(events):
            yield {**base, "type": "track", "messageId": f"r-t{n}-{i}", "event": event}


def test_a_discount_to_no_discount_members_or_a_suppression_list_is_cs109(
    tmp_path: Path,
) -> None:
    text = (
        "segments:\n"
        "  promo: {event: g_promo}\n  vip: {event: g_vip}\n"
        "  buyers: {event: order_completed, within: 7d}\n"
        "audiences:\n"
        + documented("cio_promo", "    segment: promo\n    offer: discount_15\n"
                     "    destinations: [warehouse]\n")
        + documented("cio_buyers", "    segment: buyers\n    refresh: realtime\n"
                     "    destinations: [warehouse]\n")
        + "lint:\n  no_discount_segments: [vip]\n"
    )  # fmt: skip
    found = sorted((f.message, f.fix, f.figure) for f in lint(tmp_path, text, shoppers())
                   if f.code == "CS109")  # fmt: skip
    assert found == [
        ("cio_promo offers discount_15 to 2 members of the suppression list cio_buyers",
         "add buyers to cio_promo's exclude:", 2),
        ("cio_promo offers discount_15 to 3 members of the no-discount segment vip",
         "add vip to cio_promo's exclude:", 3),
    ]  # fmt: skip
