"""A project of real-time audiences, an engine with the real-time loop on a test clock."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cohortsync.engine import Engine
from cohortsync.realtime.evaluation import ProfileProcessor
from cohortsync.realtime.index import build_index
from cohortsync.realtime.loop import RealtimeLoop
from tests.conftest import PROJECT_YAML

T0 = datetime(2026, 4, 1, 9, tzinfo=UTC)

REALTIME_YAML = """\
traits:
  spend: {event: order_completed, sum: revenue}
segments:
  cart_6h:
    all:
      - {event: added_to_cart, within: 6h}
      - not: {event: order_completed, since: added_to_cart}
  bought_1d: {event: order_completed, within: 1d}
  browsing: {event: product_viewed, within: 3h, count: {gte: 2}}
  lapsing: {event: order_completed, between: [2d, 1d]}
  big_spender: {trait: spend, gte: 100}
  vip: {trait: tier, eq: vip}
  lapsing_big: {all: [{segment: lapsing}, {segment: big_spender}]}
  emailable: {has: email}
audiences:
  rt_cart_abandon_6h:
    segment: cart_6h
    exclude: [bought_1d]
    refresh: realtime
    holdout: {percent: 25}
  rt_purchase_suppress: {segment: bought_1d, refresh: realtime}
  rt_browse: {segment: browsing, exclude: [vip], refresh: realtime}
  rt_lapsing_big: {segment: lapsing_big, refresh: realtime}
  rt_emailable: {segment: emailable, refresh: realtime}
  nightly_vip: {segment: vip, refresh: 1d}
"""


@dataclass
class Clock:
    """The time the test says it is."""

    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now


_ids = iter(range(10**9))


def stamp(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def message(kind: str, user: str, at: datetime, **fields: Any) -> dict[str, Any]:
    return {
        "type": kind,
        "messageId": f"rt-{next(_ids):08d}",
        "userId": user,
        "timestamp": stamp(at),
        **fields,
    }


@pytest.fixture
def realtime_dir(project_dir: Path) -> Path:
    (project_dir / "cohortsync.yml").write_text(PROJECT_YAML + REALTIME_YAML, encoding="utf-8")
    return project_dir


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def live(realtime_dir: Path, clock: Clock) -> Iterator[tuple[Engine, RealtimeLoop]]:
    """The engine with its real-time loop (driven by the test: `loop.step()`, no thread)."""
    with Engine.open(realtime_dir) as engine:
        index = build_index(engine.segments)
        processor = ProfileProcessor(engine.store, engine.segments, index, engine.sync_setup.routes)
        loop = RealtimeLoop(engine.store, processor, clock, identity=engine.project.identity)
        engine.on_stored(loop.submit)
        yield engine, loop


def at(start: datetime, **delta: float) -> datetime:
    return start + timedelta(**delta)
