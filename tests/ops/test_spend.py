"""`ingest-spend` and the report's paid CAC: stored, replaced on re-ingest, a bad file stores
nothing; cost per incremental conversion = spend / incremental, by period and ISO week."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from cohortsync.engine import Engine
from cohortsync.errors import InputError
from cohortsync.ops.report_json import cost_json
from cohortsync.ops.report_trend import cost
from tests.audiences.conftest import identify, track
from tests.ops.report_projects import report_project

MONDAY = datetime(2026, 3, 2, 12, tzinfo=UTC)  # ISO week 2026-W10
H = timedelta(hours=1)
D = timedelta(days=1)

YAML = """\
segments:
  carted_3d: {event: added_to_cart, within: 3d}
audiences:
  cio_cart_3d: {segment: carted_3d, holdout: {percent: 50}}
destinations:
  meta_capi: {type: meta_capi, pixel_id: "1234567890", access_token: t, dry_run: true}
conversions:
  - {event: order_completed, as: Purchase, value: revenue, currency: USD, destinations: [meta_capi]}
report: {window: 2d}
"""

SPEND = """\
date,destination,campaign,spend,currency
2026-03-02,meta_ads,cio_cart_3d,100.50,USD
2026-03-03,meta_ads,cio_cart_3d,80,usd
2026-03-03,google_ads,cio_cart_3d,40,EUR
2026-03-09,meta_ads,cio_cart_3d,60,USD
2026-03-09,meta_ads,cio_someone_else,999,USD
2026-04-30,meta_ads,cio_cart_3d,5000,USD
"""


def stored(shop: Engine) -> list[tuple[str, str, str, float, str]]:
    """Every row of the spend table."""
    with shop.store.sql.reading() as tx:
        rows = tx.run(
            "SELECT CAST(spend_date AS VARCHAR), destination, audience, spend, currency "
            "FROM ad_spend ORDER BY 1, 2, 3"
        )
    return [(str(a), str(b), str(c), float(d), str(e)) for a, b, c, d, e in rows]


def entrants(shop: Engine, start: int, at: datetime) -> None:
    """Users u<start>..u<start+29> cart at `at` and enter; the treatment all buy a day later,
    one holdout profile in four does."""
    users = [f"u{i}" for i in range(start, start + 30)]
    shop.ingest_messages(
        [identify(u, at, email=f"{u}@example.com") for u in users]
        + [track(u, "added_to_cart", at) for u in users]
    )
    shop.compute(at + H)
    held = {m.user_id: m.holdout for m in shop.members("cio_cart_3d")}
    buyers = [u for k, u in enumerate(users) if not held[u] or k % 4 == 0]
    shop.ingest_messages([track(u, "order_completed", at + D, revenue=30) for u in buyers])


@pytest.mark.parametrize("engine", ["duckdb", "postgres"])
def test_spend_is_stored_replaced_and_divided_by_incremental_conversions(
    tmp_path: Path, engine: str
) -> None:
    spend = tmp_path / "spend.csv"
    spend.write_text(SPEND, encoding="utf-8")
    with report_project(tmp_path, engine, YAML) as root, Engine.open(root) as shop:
        first = shop.ingest_spend(spend)
        assert (first.rows, first.replaced) == (6, 0)
        assert first.totals == (("EUR", 40.0), ("USD", 100.5 + 80 + 60 + 999 + 5000))
        assert first.unreported_audiences == ("cio_someone_else",)
        assert ("2026-03-03", "meta_ads", "cio_cart_3d", 80.0, "USD") in stored(shop)

        spend.write_text(SPEND.replace("2026-03-03,meta_ads,cio_cart_3d,80,", "2026-03-03,"
                                       "meta_ads,cio_cart_3d,90,"), encoding="utf-8")  # fmt: skip
        again = shop.ingest_spend(spend)
        assert (again.rows, again.replaced) == (6, 6)
        rows = stored(shop)
        assert len(rows) == 6 and ("2026-03-03", "meta_ads", "cio_cart_3d", 90.0, "USD") in rows

        entrants(shop, 0, MONDAY)
        entrants(shop, 100, MONDAY + 7 * D)
        shop.compute(MONDAY + 9 * D)
        found = shop.report(MONDAY, MONDAY + 8 * D)
    (one,) = found.audiences
    assert one.lift is not None and one.lift.incremental > 0
    usd = 100.5 + 90 + 60  # 2026-03-02 … 2026-03-10 only
    assert [(c.currency, c.spend) for c in one.spend] == [("EUR", 40.0), ("USD", usd)]
    for c in one.spend:
        assert c.per_incremental == pytest.approx(c.spend / one.lift.incremental)
        assert c.per_incremental_low == pytest.approx(c.spend / one.lift.incremental_high)
        if one.lift.incremental_low > 0:
            assert c.per_incremental_high == pytest.approx(c.spend / one.lift.incremental_low)
        else:
            assert c.per_incremental_high is None
    assert [w.week for w in one.weeks] == ["2026-W10", "2026-W11"]
    assert [w.starts for w in one.weeks] == [date(2026, 3, 2), date(2026, 3, 9)]
    w10, w11 = one.weeks
    assert w10.treatment_profiles + w11.treatment_profiles == one.treatment.profiles
    assert w10.holdout_converted + w11.holdout_converted == one.holdout.converted
    assert [(c.currency, c.spend) for c in w10.spend] == [("EUR", 40.0), ("USD", 190.5)]
    assert [(c.currency, c.spend) for c in w11.spend] == [("USD", 60.0)]
    for w in (w10, w11):
        assert w.lift == pytest.approx(
            w.treatment_converted / w.treatment_profiles - w.holdout_converted / w.holdout_profiles
        )
        for c in w.spend:
            assert c.per_incremental == pytest.approx(c.spend / (w.lift * w.treatment_profiles))


@pytest.mark.parametrize("engine", ["duckdb", "postgres"])
def test_a_bad_row_stores_nothing_and_names_its_line(tmp_path: Path, engine: str) -> None:
    good = tmp_path / "good.csv"
    good.write_text(SPEND, encoding="utf-8")
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "date,destination,audience,spend,currency\n"
        "2026-03-05,meta_ads,cio_cart_3d,10,USD\n"
        "05/03/2026,meta_ads,cio_cart_3d,10,USD\n"
        "2026-03-06,meta_ads,cio_cart_3d,$12,USD\n"
        "2026-03-07,meta_ads,cio_cart_3d,-1,USD\n"
        "2026-03-08,,cio_cart_3d,10,USD\n"
        "2026-03-09,meta_ads,cio_cart_3d,10,dollars\n"
        "2026-03-05,meta_ads,cio_cart_3d,11,USD\n",
        encoding="utf-8",
    )
    with report_project(tmp_path, engine, YAML) as root, Engine.open(root) as shop:
        shop.ingest_spend(good)
        before = stored(shop)
        with pytest.raises(InputError) as caught:
            shop.ingest_spend(bad)
        assert stored(shop) == before
    lines = str(caught.value).splitlines()
    assert [line.split(": ", 1)[0] for line in lines[:-1]] == [f"{bad}:{n}" for n in range(3, 9)]
    assert "2026-03-01" in lines[0] and "number ≥ 0" in lines[1] and "number ≥ 0" in lines[2]
    assert "destination is empty" in lines[3] and "ISO 4217" in lines[4] and "line 2" in lines[5]
    assert lines[-1].startswith(f"nothing of {bad} was stored")


def test_header_problems_are_line_one(tmp_path: Path) -> None:
    path = tmp_path / "spend.csv"
    path.write_text("date,destination,audience,campaign,cost,currency\n", encoding="utf-8")
    with (
        report_project(tmp_path, "duckdb", YAML) as root,
        Engine.open(root) as shop,
        pytest.raises(InputError) as caught,
    ):
        shop.ingest_spend(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:1: ") and "not both" in message and "'cost'" in message
    assert "'spend'" in message and "date,destination,audience,spend,currency" in message


def test_cost_is_unbounded_where_incremental_conversions_are_not_above_zero() -> None:
    assert cost_json(cost("USD", 300.0, (10.0, 2.0, 20.0))) == {
        "currency": "USD",
        "spend": 300.0,
        "cost_per_incremental_conversion": 30.0,
        "cost_per_incremental_conversion_ci": [15.0, 150.0],
    }
    crossing = cost_json(cost("USD", 300.0, (10.0, -4.0, 20.0)))
    assert crossing["cost_per_incremental_conversion_ci"] == [15.0, "unbounded"]
    none = cost_json(cost("USD", 300.0, (-1.0, -4.0, 0.0)))
    assert none["cost_per_incremental_conversion"] == "unbounded"
    assert none["cost_per_incremental_conversion_ci"] == ["unbounded", "unbounded"]
    unmeasured = cost_json(cost("EUR", 50.0, None))
    assert unmeasured["cost_per_incremental_conversion"] is None
    assert unmeasured["cost_per_incremental_conversion_ci"] is None
