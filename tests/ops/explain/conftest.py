"""A small shop with a cart audience (exclusions, a holdout, two destinations) and a value
audience, its events at fixed instants around T, computed at T."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cohortsync.engine import Engine
from tests.audiences.conftest import D, H, T, identify, track
from tests.conftest import PROJECT_YAML

EXPLAIN_YAML = """\
traits:
  ltv: {event: order_completed, sum: revenue}
segments:
  cart_6h:
    description: Added to cart in the last 6 hours and has not ordered since.
    all:
      - {event: added_to_cart, within: 6h}
      - not: {event: order_completed, since: added_to_cart}
  bought_7d: {event: order_completed, within: 7d}
  staff: {trait: role, eq: staff}
  vip: {trait: ltv, gte: 100}
audiences:
  cio_cart_6h:
    segment: cart_6h
    exclude: [bought_7d, staff]
    holdout: {percent: 50}
    identifiers: [email]
    destinations: [warehouse, meta_ads]
  cio_vip:
    segment: vip
    destinations: [warehouse]
destinations:
  warehouse: {type: warehouse, url: "duckdb:///warehouse.duckdb"}
  meta_ads:
    type: meta_custom_audience
    ad_account_id: act_1
    access_token: not-a-token
    dry_run: true
"""

CARTERS = 8
"""Shoppers c0..c7 added to cart 1 h before T: members of cio_cart_6h, some held out."""


@pytest.fixture
def shop_dir(project_dir: Path) -> Path:
    """The project with its events stored and computed at T (nothing synced yet)."""
    (project_dir / "cohortsync.yml").write_text(PROJECT_YAML + EXPLAIN_YAML, encoding="utf-8")
    return stocked(project_dir)


@pytest.fixture
def shop_on_both(project_on_both: Path) -> Iterator[Engine]:
    """`shop`, once on DuckDB and once on a fresh Postgres schema."""
    project_file = project_on_both / "cohortsync.yml"
    project_file.write_text(project_file.read_text() + EXPLAIN_YAML, encoding="utf-8")
    with Engine.open(stocked(project_on_both)) as opened:
        yield opened


def stocked(project_dir: Path) -> Path:
    """Store the shop's events in the project and compute at T."""
    messages = []
    for n in range(CARTERS):
        messages.append(identify(f"c{n}", T - 48 * H, email=f"c{n}@example.com"))
        messages.append(track(f"c{n}", "Added To Cart", T - 1 * H))
    messages += [
        identify("bob", T - 48 * H, email="bob@example.com"),
        track("bob", "Added To Cart", T - 5 * H),  # leaves the 6h window at T + 1h
        identify("cy", T - 48 * H, email="cy@example.com"),
        track("cy", "Order Completed", T - 3 * D, revenue=30),
        track("cy", "Added To Cart", T - 1 * H),  # in cart_6h, and bought in the last 7 days
        identify("dee", T - 48 * H, email="dee@example.com", role="staff"),
        track("dee", "Added To Cart", T - 1 * H),
        identify("eve", T - 48 * H, email="eve@example.com"),
        track("eve", "Order Completed", T - 2 * H, revenue=150),
        *(track(f"nomail{n}", "Added To Cart", T - 1 * H) for n in range(4)),  # no email
        track("late", "Added To Cart", T + 1 * H),  # after T: not there as of T
    ]
    with Engine.open(project_dir) as engine:
        engine.ingest_messages(messages)
        engine.compute(T)
    return project_dir


@pytest.fixture
def shop(shop_dir: Path) -> Iterator[Engine]:
    with Engine.open(shop_dir) as opened:
        yield opened
