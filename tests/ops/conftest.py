"""A small shop whose audiences go to a DuckDB warehouse and hashed files, and helpers to edit
its project file the way a team does between two commits."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from cohortsync.engine import Engine
from tests.conftest import PROJECT_YAML

T = datetime(2026, 3, 1, 12, tzinfo=UTC)
H = timedelta(hours=1)
D = timedelta(days=1)

LOCK_YAML = """\
traits:
  ltv: {event: order_completed, sum: revenue}
segments:
  carted_7d: {event: added_to_cart, within: 7d}
  recent_buyer_3d: {event: order_completed, within: 3d}
  big_spender: {trait: ltv, gte: 100}
audiences:
  cio_cart_7d:
    segment: carted_7d
    exclude: [recent_buyer_3d]
    holdout: {percent: 20}
    identifiers: [email]
    destinations: [warehouse, exports]
    owner: lifecycle@shop.example
    description: Carted this week, has not bought in 3 days.
  cio_big_spenders:
    segment: big_spender
    refresh: 1d
    destinations: [warehouse]
    owner: retention@shop.example
  cio_unsynced:
    segment: carted_7d
"""

DESTINATIONS_YAML = """\
destinations:
  warehouse: {type: warehouse, url: "duckdb:///warehouse.duckdb"}
  exports: {type: files, path: exports, platform: meta, formats: [csv]}
"""

_ids = iter(range(10**9))


def stamp(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def identify(n: int, at: datetime) -> dict[str, Any]:
    return {
        "type": "identify",
        "messageId": f"o-{next(_ids):07d}",
        "userId": f"u{n}",
        "timestamp": stamp(at),
        "traits": {"email": f"shopper{n}@example.com"},
    }


def track(n: int, event: str, at: datetime, **props: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "messageId": f"o-{next(_ids):07d}",
        "userId": f"u{n}",
        "event": event,
        "timestamp": stamp(at),
        "properties": props,
    }


def shop() -> list[dict[str, Any]]:
    """40 shoppers: all cart within the week (u0–u39 at 1–5 days ago); every fourth bought
    2 days ago (excluded from cio_cart_7d), every fifth spent 150 (a big spender) 10 days ago."""
    messages: list[dict[str, Any]] = []
    for n in range(40):
        messages.append(identify(n, T - 30 * D))
        messages.append(track(n, "Added To Cart", T - (1 + n % 5) * D))
        if n % 4 == 0:
            messages.append(track(n, "Order Completed", T - 2 * D, revenue=20))
        if n % 5 == 0:
            messages.append(track(n, "Order Completed", T - 10 * D, revenue=150))
    return messages


def write_project(folder: Path, audiences: str = LOCK_YAML, store: str | None = None) -> None:
    """The project file: the shared head (its store replaced by `store`), `audiences`
    (traits, segments, audiences), the destinations."""
    head = PROJECT_YAML
    if store is not None:
        head = head.replace("store: .cohortsync/store.duckdb", f"store: {store}")
    (folder / "cohortsync.yml").write_text(head + audiences + DESTINATIONS_YAML, encoding="utf-8")


def edit(folder: Path, old: str, new: str) -> None:
    """Replace `old` (which must be there) with `new` in the project file."""
    path = folder / "cohortsync.yml"
    text = path.read_text(encoding="utf-8")
    assert old in text, old
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


@pytest.fixture
def shop_dir(tmp_path: Path) -> Iterator[Path]:
    """The project with its shop ingested, computed at T and synced: ready to be locked."""
    yield from _shop(tmp_path, None)


@pytest.fixture
def shop_on_both(tmp_path: Path, store_location: str) -> Iterator[Path]:
    """`shop_dir`, once with its store on DuckDB and once on Postgres."""
    yield from _shop(tmp_path, store_location)


def _shop(tmp_path: Path, store: str | None) -> Iterator[Path]:
    write_project(tmp_path, store=store)
    with Engine.open(tmp_path) as engine:
        engine.ingest_messages(shop())
        engine.compute(T)
        engine.sync(clock=lambda: T)
    yield tmp_path


def warehouse_members(folder: Path, audience: str) -> set[tuple[str, bool]]:
    """(profile_id, holdout) the DuckDB warehouse holds for `audience`."""
    with duckdb.connect(str(folder / "warehouse.duckdb"), read_only=True) as con:
        rows = con.execute(
            "SELECT profile_id, holdout FROM cohortsync.audience_members WHERE audience = ?",
            [audience],
        ).fetchall()
    return {(str(p), bool(h)) for p, h in rows}
