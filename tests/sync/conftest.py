"""A project whose audiences flow to scripted destinations, and a clock the test moves."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cohortsync.engine import Engine
from cohortsync.sync.retry import RetryPolicy
from tests.conftest import PROJECT_YAML
from tests.sync.scripted import REMOTES, Remote

T0 = datetime(2026, 5, 1, 12, tzinfo=UTC)
MIN = timedelta(minutes=1)
H = timedelta(hours=1)

SYNC_YAML = """\
segments:
  cart_1h: {event: added_to_cart, within: 1h}
audiences:
  cio_cart_1h:
    segment: cart_1h
    holdout: {percent: 30}
    destinations: [ads, wh]
destinations:
  ads: {type: "tests.sync.scripted:ScriptedAds", remote: ads}
  wh: {type: "tests.sync.scripted:ScriptedWarehouse", remote: wh}
conversions:
  - {event: order_completed, as: Purchase, value: revenue, currency: usd, destinations: [ads]}
"""


@dataclass
class Clock:
    """Now, as the test says."""

    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> datetime:
        self.now += delta
        return self.now


_ids = iter(range(10**9))


def stamp(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def person(n: int, at: datetime) -> dict[str, Any]:
    """An identify giving user u<n> an email (and a phone for even n)."""
    traits: dict[str, Any] = {"email": f"Person{n}@Example.com"}
    if n % 2 == 0:
        traits["phone"] = f"+1 650 555 {1000 + n:04d}"
    return {
        "type": "identify",
        "messageId": f"s-{next(_ids):08d}",
        "userId": f"u{n}",
        "timestamp": stamp(at),
        "traits": traits,
    }


def track(n: int, event: str, at: datetime, **props: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "messageId": f"s-{next(_ids):08d}",
        "userId": f"u{n}",
        "event": event,
        "timestamp": stamp(at),
        "properties": props,
    }


@pytest.fixture
def sync_dir(project_dir: Path) -> Path:
    (project_dir / "cohortsync.yml").write_text(PROJECT_YAML + SYNC_YAML, encoding="utf-8")
    return project_dir


@pytest.fixture
def remotes() -> Iterator[dict[str, Remote]]:
    REMOTES.clear()
    REMOTES["ads"] = Remote()
    REMOTES["wh"] = Remote()
    yield REMOTES
    REMOTES.clear()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def policy() -> RetryPolicy:
    """Backoff of 10 s doubling to 10 min, a 1 h give-up window, jitter seeded."""
    return RetryPolicy(base=10, cap=600, window=3600, auth_pause=300, rng=random.Random(7))


@pytest.fixture
def shop(sync_dir: Path, remotes: dict[str, Remote]) -> Iterator[Engine]:
    """Twenty known people; the engine open on the project."""
    with Engine.open(sync_dir) as engine:
        engine.ingest_messages([person(n, T0 - H) for n in range(20)])
        yield engine


@pytest.fixture
def shop_on_both(project_on_both: Path, remotes: dict[str, Remote]) -> Iterator[Engine]:
    """`shop`, once on a DuckDB store and once on a Postgres one."""
    settings = project_on_both / "cohortsync.yml"
    settings.write_text(settings.read_text(encoding="utf-8") + SYNC_YAML, encoding="utf-8")
    with Engine.open(project_on_both) as engine:
        engine.ingest_messages([person(n, T0 - H) for n in range(20)])
        yield engine
