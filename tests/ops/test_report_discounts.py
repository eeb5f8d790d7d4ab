"""`report`: discounted conversions per arm and suppression failures, on DuckDB and Postgres."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cohortsync.engine import Engine
from tests.audiences.conftest import identify, track
from tests.ops.report_projects import report_project

T = datetime(2026, 3, 2, 12, tzinfo=UTC)
H = timedelta(hours=1)
D = timedelta(days=1)
ENTRY = T + H
FIRST = ENTRY + D  # every user's first order; suppression is computed at this very instant
SECOND = ENTRY + 2 * D  # even users order again, while in the suppression audience

YAML = """\
segments:
  carted_7d: {event: added_to_cart, within: 7d}
  bought_7d: {event: order_completed, within: 7d}
audiences:
  cio_cart_7d: {segment: carted_7d, holdout: {percent: 50}}
  cio_recent_purch_7d_suppress: {segment: bought_7d}
destinations:
  meta_capi: {type: meta_capi, pixel_id: "1234567890", access_token: t, dry_run: true}
conversions:
  - {event: order_completed, as: Purchase, value: revenue, currency: USD, destinations: [meta_capi]}
report:
  window: 7d
  discount_properties: [discount, discount_amount]
  coupon_properties: [coupon]
"""

USERS = 30


def first_order(i: int) -> tuple[dict[str, Any], float | None]:
    """User i's first order properties, and its discount amount (None: not discounted)."""
    kind = i % 5
    if kind == 0:
        return {"revenue": 50, "discount": 5.0}, 5.0
    if kind == 1:
        return {"revenue": 50, "coupon": "SPRING"}, 0.0  # coupon only: discounted, no amount
    if kind == 2:
        return {"revenue": 50, "discount": 0, "coupon": "  "}, None  # zero and blank: not
    if kind == 3:  # a string is no amount; the next property holds one
        return {"revenue": 50, "discount": "5", "discount_amount": 3}, 3.0
    return {"revenue": 50, "discount": -2}, None


def build(shop: Engine) -> dict[int, bool]:
    """Carts at T, first orders at FIRST, second orders (discount 2) of even users at SECOND;
    the holdout flag of each user."""
    shop.ingest_messages(
        [identify(f"u{i}", T, email=f"d{i}@example.com") for i in range(USERS)]
        + [track(f"u{i}", "added_to_cart", T) for i in range(USERS)]
    )
    shop.compute(ENTRY)
    flags = {int((m.user_id or "u")[1:]): bool(m.holdout) for m in shop.members("cio_cart_7d")}
    shop.ingest_messages(
        [track(f"u{i}", "order_completed", FIRST, **first_order(i)[0]) for i in range(USERS)]
    )
    shop.compute(FIRST)  # the entry these orders cause: at the order's own instant
    shop.ingest_messages(
        [
            track(f"u{i}", "order_completed", SECOND, revenue=20, discount=2)
            for i in range(0, USERS, 2)
        ]
    )
    shop.compute(SECOND + H)
    return flags


def hand_count(flags: dict[int, bool], held: bool) -> tuple[int, int, float, int]:
    """Orders, discounted orders, discount total and failures of one arm, counted by hand."""
    users = [i for i, h in flags.items() if h == held]
    orders = len(users) + sum(1 for i in users if i % 2 == 0)
    firsts = [first_order(i)[1] for i in users]
    discounted = sum(1 for a in firsts if a is not None) + sum(1 for i in users if i % 2 == 0)
    total = sum(a for a in firsts if a) + 2.0 * sum(1 for i in users if i % 2 == 0)
    failures = sum(1 for i in users if i % 2 == 0)  # only the second orders
    return orders, discounted, total, failures


@pytest.mark.parametrize("engine", ["duckdb", "postgres"])
def test_discount_shares_per_arm_and_suppression_failures_match_a_hand_count(
    tmp_path: Path, engine: str
) -> None:
    with report_project(tmp_path, engine, YAML) as root, Engine.open(root) as shop:
        flags = build(shop)
        found = shop.report(T, T + D)
    assert set(flags.values()) == {True, False}
    assert found.suppression_audiences == ("cio_recent_purch_7d_suppress",)
    assert found.discount_properties == ("discount", "discount_amount")
    (one,) = found.audiences
    for arm, held in ((one.treatment, False), (one.holdout, True)):
        orders, discounted, total, failures = hand_count(flags, held)
        assert arm.orders == orders
        assert arm.discounted_orders == discounted
        assert arm.discount_total == pytest.approx(total)
        assert arm.discount_share == pytest.approx(discounted / orders)
        assert arm.suppression_failures == failures
    # every profile converted in both arms: the holdout rate is 1
    n_t = one.treatment.profiles
    coupon_only = sum(1 for i, h in flags.items() if not h and i % 5 == 1)
    priced = one.treatment.discounted_orders - coupon_only
    assert one.treatment.priced_orders == priced
    per_order = one.treatment.discount_total / priced
    assert one.discount_spent_anyway == pytest.approx(1.0 * n_t * per_order)


@pytest.mark.parametrize("engine", ["duckdb", "postgres"])
def test_an_order_is_a_failure_only_after_its_buyer_entered_suppression(
    tmp_path: Path, engine: str
) -> None:
    with report_project(tmp_path, engine, YAML) as root, Engine.open(root) as shop:
        shop.ingest_messages(
            [
                identify("a", T, email="a@example.com"),
                track("a", "added_to_cart", T),
                identify("b", T, email="b@example.com"),
                track("b", "added_to_cart", T),
            ]
        )
        shop.compute(ENTRY)
        # a: a discounted order that makes a a buyer; b: a discounted order an hour after the
        # compute that put b in the suppression audience (b bought once, undiscounted, before)
        shop.ingest_messages(
            [
                track("a", "order_completed", FIRST, discount=4),
                track("b", "order_completed", FIRST, revenue=10),
            ]
        )
        shop.compute(FIRST)
        shop.ingest_messages([track("b", "order_completed", FIRST + H, coupon="BACK10")])
        shop.compute(FIRST + 2 * H)
        found = shop.report(T, T + D)
    (one,) = found.audiences
    arms = one.treatment + one.holdout
    assert (arms.orders, arms.discounted_orders, arms.suppression_failures) == (3, 2, 1)
