"""`report` on generated data with a known true lift: thousands of entrants through the store,
the figures equal statsmodels and scipy on the same counts, the interval covers the truth."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from scipy.stats.contingency import relative_risk
from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest

from cohortsync.engine import Engine
from tests.audiences.conftest import identify, track
from tests.ops.report_projects import report_project

T = datetime(2026, 6, 1, 8, tzinfo=UTC)
ENTRY = T + timedelta(hours=1)
D = timedelta(days=1)
ENTRANTS = 3000
RATE_TREATMENT, RATE_HOLDOUT = 0.12, 0.08

YAML = """\
segments:
  viewed_7d: {event: product_viewed, within: 7d}
audiences:
  cio_browse_7d: {segment: viewed_7d, holdout: {percent: 50}}
destinations:
  meta_capi: {type: meta_capi, pixel_id: "1234567890", access_token: t, dry_run: true}
conversions:
  - {event: order_completed, as: Purchase, value: revenue, currency: USD, destinations: [meta_capi]}
report: {window: 7d}
"""


@pytest.mark.parametrize("engine", ["duckdb", "postgres"])
def test_generated_lift_matches_the_libraries_and_covers_the_truth(
    tmp_path: Path, engine: str
) -> None:
    rng = np.random.default_rng(20260601)
    users = [f"g{i}" for i in range(ENTRANTS)]
    with report_project(tmp_path, engine, YAML) as root, Engine.open(root) as shop:
        shop.ingest_messages(
            [identify(u, T, email=f"{u}@example.com") for u in users]
            + [track(u, "product_viewed", T) for u in users]
        )
        shop.compute(ENTRY)
        held = {m.user_id: m.holdout for m in shop.members("cio_browse_7d")}
        draws = rng.random(ENTRANTS)
        days = rng.uniform(0, 7, ENTRANTS)  # first conversion, days after entering
        first_day: dict[str, tuple[bool, float]] = {}
        orders = []
        for u, draw, day in zip(users, draws, days, strict=True):
            if draw < (RATE_HOLDOUT if held[u] else RATE_TREATMENT):
                first_day[u] = (bool(held[u]), float(day))
                orders.append(track(u, "order_completed", ENTRY + day * D, revenue=40))
        shop.ingest_messages(orders)
        shop.compute(ENTRY + 8 * D)
        found = shop.report(T, T + D)
    (one,) = found.audiences
    n_c = sum(1 for u in users if held[u])
    n_t = ENTRANTS - n_c
    x_c = sum(1 for h, _ in first_day.values() if h)
    x_t = len(first_day) - x_c
    assert (one.treatment.profiles, one.treatment.converted) == (n_t, x_t)
    assert (one.holdout.profiles, one.holdout.converted) == (n_c, x_c)
    f = one.lift
    assert f is not None
    low, high = confint_proportions_2indep(x_t, n_t, x_c, n_c, compare="diff", method="newcomb")
    assert (f.lift_low, f.lift_high) == pytest.approx((low, high), abs=1e-12)
    assert f.lift_low <= RATE_TREATMENT - RATE_HOLDOUT <= f.lift_high
    assert f.lift_low > 0  # 3,000 entrants detect a 4 pp lift
    assert f.p_value == pytest.approx(proportions_ztest([x_t, x_c], [n_t, n_c])[1], rel=1e-9)
    assert f.relative == pytest.approx((x_t / n_t) / (x_c / n_c) - 1, rel=1e-12)
    rr = relative_risk(x_t, n_t, x_c, n_c).confidence_interval(0.95)
    assert (f.relative_low, f.relative_high) == pytest.approx((rr.low - 1, rr.high - 1), rel=1e-9)
    assert f.relative_low <= RATE_TREATMENT / RATE_HOLDOUT - 1 <= f.relative_high
    # the curve: share of each arm that converted within `day` days, ending at the arm's rate
    assert [p.day for p in one.curve] == list(range(8))
    for point in one.curve:
        by_hand_t = sum(1 for h, d in first_day.values() if not h and d <= point.day) / n_t
        by_hand_c = sum(1 for h, d in first_day.values() if h and d <= point.day) / n_c
        assert point.treatment == pytest.approx(by_hand_t)
        assert point.holdout == pytest.approx(by_hand_c)
    assert one.curve[-1].treatment == pytest.approx(x_t / n_t)
