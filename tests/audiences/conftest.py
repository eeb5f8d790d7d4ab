"""A retention project (traits, segments, audiences) and helpers to build histories."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cohortsync.engine import Engine
from tests.conftest import PROJECT_YAML

T = datetime(2026, 3, 1, 12, tzinfo=UTC)
H = timedelta(hours=1)
D = timedelta(days=1)

AUDIENCE_YAML = """\
traits:
  ltv: {event: order_completed, sum: revenue}
segments:
  cart_abandon_6h:
    description: Added to cart in the last 6 hours and has not purchased since.
    all:
      - {event: added_to_cart, within: 6h}
      - not: {event: order_completed, since: added_to_cart}
  recent_purch_7d: {event: order_completed, within: 7d}
  browsed_1d: {event: product_viewed, within: 1d}
  staff: {trait: role, eq: staff}
audiences:
  cio_cart_abandon_6h:
    segment: cart_abandon_6h
    exclude: [recent_purch_7d, staff]
    holdout: {percent: 50}
    identifiers: [email, phone]
  cio_browse_1d:
    segment: browsed_1d
    exclude: [recent_purch_7d]
"""

_ids = iter(range(10**9))


def stamp(moment: datetime) -> str:
    """ISO-8601 with a Z."""
    return moment.isoformat().replace("+00:00", "Z")


def track(user: str, event: str, at: datetime, **props: Any) -> dict[str, Any]:
    """A track message of `user` at `at`."""
    return {
        "type": "track",
        "messageId": f"a-{next(_ids):07d}",
        "userId": user,
        "event": event,
        "timestamp": stamp(at),
        "properties": props,
    }


def identify(user: str, at: datetime, **traits: Any) -> dict[str, Any]:
    """An identify message of `user` at `at`."""
    return {
        "type": "identify",
        "messageId": f"a-{next(_ids):07d}",
        "userId": user,
        "timestamp": stamp(at),
        "traits": traits,
    }


@pytest.fixture
def audience_dir(project_dir: Path) -> Path:
    """The shared project file plus traits, segments and audiences."""
    (project_dir / "cohortsync.yml").write_text(PROJECT_YAML + AUDIENCE_YAML, encoding="utf-8")
    return project_dir


@pytest.fixture
def shop(audience_dir: Path) -> Iterator[Engine]:
    """The audience project opened on its own store."""
    with Engine.open(audience_dir) as opened:
        yield opened


def users(members: list[Any]) -> set[str]:
    """The user_ids of members."""
    return {m.user_id for m in members}
