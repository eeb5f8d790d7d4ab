"""`report`: purchase → suppression acknowledged per destination, from a real sync to local
files destinations, on DuckDB and Postgres."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from cohortsync.engine import Engine
from tests.audiences.conftest import identify, track
from tests.ops.report_projects import report_project
from tests.sync.conftest import Clock

T = datetime(2026, 4, 6, 9, tzinfo=UTC)
MIN = timedelta(minutes=1)
H = timedelta(hours=1)

YAML = """\
segments:
  carted_7d: {event: added_to_cart, within: 7d}
  bought_7d: {event: order_completed, within: 7d}
audiences:
  cio_cart_7d:
    segment: carted_7d
    exclude: [bought_7d]
    holdout: {percent: 50}
    destinations: [shelf_a]
  cio_recent_purch_7d_suppress: {segment: bought_7d, destinations: [shelf_a, shelf_b]}
destinations:
  shelf_a: {type: files, path: out_a, formats: [csv]}
  shelf_b: {type: files, path: out_b, formats: [csv]}
  meta_capi: {type: meta_capi, pixel_id: "1234567890", access_token: t, dry_run: true}
conversions:
  - {event: order_completed, as: Purchase, value: revenue, currency: USD, destinations: [meta_capi]}
report: {window: 7d}
"""

BOUGHT = {"u0": T + 2 * H, "u1": T + 2 * H + 10 * MIN}
COMPUTED = T + 3 * H  # the compute that records their suppression and exits
SYNCED = T + 3 * H + 5 * MIN  # the sync whose acknowledgements the report reads
LATE = T + 3 * H + 10 * MIN  # u3 buys after that sync: computed, not delivered


@pytest.mark.parametrize("engine", ["duckdb", "postgres"])
def test_latency_per_destination_equals_the_timestamps_built(tmp_path: Path, engine: str) -> None:
    with report_project(tmp_path, engine, YAML) as root, Engine.open(root) as shop:
        users = ["u0", "u1", "u2", "u3"]
        shop.ingest_messages(
            [identify(u, T, email=f"{u}@example.com") for u in users]
            + [track(u, "added_to_cart", T) for u in users]
        )
        shop.compute(T + H)
        shop.sync(clock=Clock(T + H + MIN))
        shop.ingest_messages([track(u, "order_completed", at) for u, at in BOUGHT.items()])
        shop.compute(COMPUTED)
        shop.sync(clock=Clock(SYNCED))
        shop.ingest_messages([track("u3", "order_completed", LATE)])
        shop.compute(LATE + 10 * MIN)
        found = shop.report(T, T + 24 * H)
    latency = found.latency
    assert latency is not None
    assert (latency.purchases, latency.purchases_with_change) == (3, 3)
    assert latency.purchases_acknowledged == 2
    assert latency.purchases_without_acknowledged_change == 1
    seconds = [(SYNCED - at).total_seconds() for at in BOUGHT.values()]  # 3900, 3300
    by_name = {d.destination: d for d in latency.destinations}
    assert set(by_name) == {"shelf_a", "shelf_b"}
    for one in by_name.values():
        assert one.acknowledged == 2 and one.waiting == 1
        assert one.p50 == pytest.approx(np.percentile(seconds, 50))
        assert one.p95 == pytest.approx(np.percentile(seconds, 95))
        assert one.p99 == pytest.approx(np.percentile(seconds, 99))
        counts = {b.label: b.count for b in one.buckets if b.count}
        assert counts == {"15m–1h": 1, "1–6h": 1}  # 55 and 65 minutes
        assert sum(b.count for b in one.buckets) == one.acknowledged
