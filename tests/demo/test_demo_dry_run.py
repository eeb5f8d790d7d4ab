"""The demo shop's orders carry what a browser-fed shop forwards, so the example project's Meta
Conversions API dry run holds real requests, and counts apart the orders Meta would refuse."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from cohortsync.config.scaffold import scaffold_project
from cohortsync.demo.shop import SHOP_URL
from cohortsync.engine import Engine
from cohortsync.sync.run import SyncReport

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SyncReport]:
    """The example project on 400 shoppers, its Meta CAPI synced (a dry run, as configured)."""
    folder = tmp_path_factory.mktemp("demo")
    scaffold_project(folder)
    with Engine.open(folder) as engine:
        engine.load_demo(400, seed=7, now=NOW)
        engine.compute(NOW)
        yield engine.sync(destination="meta_capi", clock=lambda: NOW)


def events(folder: Path) -> list[dict[str, Any]]:
    """Every server event of every request the Meta CAPI dry run wrote."""
    written = [orjson.loads(p.read_bytes()) for p in (folder / "meta_capi").glob("*.json")]
    return [
        event for w in written for request in w["requests"] for event in request["body"]["data"]
    ]


def test_the_meta_capi_dry_run_holds_real_requests(demo: SyncReport) -> None:
    report = demo
    assert report.dry_run_folder is not None
    sent = events(report.dry_run_folder)
    capi = report.delivery.tallies[("meta_capi", None)]
    assert capi.dry_run and capi.would_send == len(sent) > 0
    for event in sent:
        assert event["event_source_url"].startswith(SHOP_URL + "/")
        assert "?" not in event["event_source_url"]  # no query, so no PII in it
        user = event["user_data"]
        assert user["client_user_agent"] and user["client_ip_address"]
        assert "@" not in orjson.dumps(user).decode()  # identifiers leave hashed


def test_orders_meta_would_refuse_are_counted_apart_with_why(demo: SyncReport) -> None:
    report = demo
    capi = report.delivery.tallies[("meta_capi", None)]
    assert capi.would_send + capi.rejected == report.planned.conversions
    assert capi.reasons.get("too_old", 0) > 0  # 180 days of orders; Meta takes the last 7
    assert sum(capi.reasons.values()) == capi.rejected
