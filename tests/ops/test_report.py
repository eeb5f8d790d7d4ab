"""`report`: entries per holdout arm, conversions within the window, on DuckDB and Postgres."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

from cohortsync.commands.report import verdict
from cohortsync.engine import Engine
from cohortsync.ops.lift import lift, srm_p_value
from cohortsync.ops.report import Arm, AudienceReport
from cohortsync.ops.validate_marks import mark
from tests.audiences.conftest import identify, stamp, track
from tests.conftest import PROJECT_YAML
from tests.ops.cli_main import run_main
from tests.postgres import postgres_schema

T = datetime(2026, 3, 1, 12, tzinfo=UTC)
H = timedelta(hours=1)
D = timedelta(days=1)
ENTRY = T + H

REPORT_YAML = """\
segments:
  carted_7d: {event: added_to_cart, within: 7d}
audiences:
  cio_cart_7d: {segment: carted_7d, holdout: {percent: 50}}
  cio_cart_plain: {segment: carted_7d}
destinations:
  meta_capi: {type: meta_capi, pixel_id: "1234567890", access_token: t, dry_run: true}
conversions:
  - {event: order_completed, as: Purchase, value: revenue, currency: USD, destinations: [meta_capi]}
report: {window: 7d}
"""


@contextmanager
def project(root: Path, engine: str) -> Iterator[Path]:
    """The report project on a DuckDB file or a fresh Postgres schema."""
    if engine == "duckdb":
        (root / "cohortsync.yml").write_text(PROJECT_YAML + REPORT_YAML, encoding="utf-8")
        yield root
        return
    with postgres_schema() as url:
        text = PROJECT_YAML.replace("store: .cohortsync/store.duckdb", f"store: {url}")
        (root / "cohortsync.yml").write_text(text + REPORT_YAML, encoding="utf-8")
        yield root


def build(shop: Engine) -> dict[str, bool]:
    """40 carts entered at ENTRY (u0 a test profile); buys inside, before and after the
    window; u99 enters after the period. The holdout flag of each user who entered."""
    shop.ingest_messages(
        [identify(f"u{i}", T, email=f"s{i}@example.com") for i in range(40)]
        + [track(f"u{i}", "added_to_cart", T) for i in range(40)]
    )
    shop.compute(ENTRY)
    flags = {m.user_id or "": bool(m.holdout) for m in shop.members("cio_cart_7d")}
    orders = []
    for i in range(40):
        if i % 3 == 0:  # inside the window, twice for some
            orders.append(track(f"u{i}", "order_completed", ENTRY + 2 * D, revenue=10.0 * i))
            if i % 2 == 0:
                orders.append(track(f"u{i}", "order_completed", ENTRY + 6 * D, revenue=5))
        elif i % 3 == 1:  # just before entering, and just after the window closes
            orders.append(track(f"u{i}", "order_completed", ENTRY - timedelta(minutes=1)))
            orders.append(track(f"u{i}", "order_completed", ENTRY + 7 * D, revenue=99))
    orders += [
        identify("u99", T, email="late@example.com"),
        track("u99", "added_to_cart", T + 3 * D),
    ]
    shop.ingest_messages(orders)
    shop.compute(T + 3 * D + H)
    mark(shop.store, [shop.find_profile("user_id:u0").profile_id], "test")
    return flags


def revenues(flags: dict[str, bool], held: bool) -> list[float]:
    """Each profile's revenue in the window, of one arm."""
    users = [int(u[1:]) for u, h in flags.items() if h == held and u != "u0"]
    return [10.0 * i + (5 if i % 2 == 0 else 0) if i % 3 == 0 else 0.0 for i in users]


def expected(flags: dict[str, bool], held: bool) -> tuple[int, int, float]:
    """Profiles, converters and revenue of one arm, counted by hand."""
    users = [int(u[1:]) for u, h in flags.items() if h == held and u != "u0"]
    converters = [i for i in users if i % 3 == 0]
    revenue = sum(10.0 * i + (5 if i % 2 == 0 else 0) for i in converters)
    return len(users), len(converters), revenue


@pytest.mark.parametrize("engine", ["duckdb", "postgres"])
def test_report_counts_arms_and_conversions_in_the_window(tmp_path: Path, engine: str) -> None:
    with project(tmp_path, engine) as root, Engine.open(root) as shop:
        flags = build(shop)
        assert "u99" not in flags and set(flags.values()) == {True, False}
        found = shop.report(T, T + D)
    assert [a.audience for a in found.audiences] == ["cio_cart_7d"]
    one = found.audiences[0]
    n_t, x_t, rev_t = expected(flags, False)
    n_c, x_c, rev_c = expected(flags, True)
    assert (one.treatment.profiles, one.treatment.converted) == (n_t, x_t)
    assert (one.holdout.profiles, one.holdout.converted) == (n_c, x_c)
    assert one.treatment.revenue == pytest.approx(rev_t)
    assert one.holdout.revenue == pytest.approx(rev_c)
    assert one.lift == lift(x_t, n_t, x_c, n_c)
    assert one.incremental_revenue == pytest.approx((rev_t / n_t - rev_c / n_c) * n_t)
    low, high = CompareMeans(
        DescrStatsW(revenues(flags, False)), DescrStatsW(revenues(flags, True))
    ).zconfint_diff(usevar="unequal")
    assert one.incremental_revenue_low == pytest.approx(low * n_t)
    assert one.incremental_revenue_high == pytest.approx(high * n_t)
    assert found.conversion_event == "order_completed" and found.value_property == "revenue"


def test_report_cli_json_and_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with project(tmp_path, "duckdb") as root, Engine.open(root) as shop:
        flags = build(shop)
    monkeypatch.chdir(root)
    out = root / "report.json"
    args = ["report", "--since", stamp(T), "--until", stamp(T + D), "--format", "json"]
    result = run_main([*args, "--out", str(out)], monkeypatch, capsys)
    assert result.code == 0, result.err
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["window"] == "7d" and data["conversion_event"] == "order_completed"
    (one,) = data["audiences"]
    n_t, x_t, _ = expected(flags, False)
    assert one["audience"] == "cio_cart_7d" and one["holdout_percent"] == 50
    assert one["treatment"]["profiles"] == n_t and one["treatment"]["converted"] == x_t
    for key in (
        "lift",
        "lift_ci",
        "relative_lift",
        "relative_lift_ci",
        "p_value",
        "incremental_conversions",
        "incremental_conversions_ci",
        "incremental_revenue",
        "incremental_revenue_ci",
        "srm_p_value",
        "srm_alert",
        "mde",
        "verdict",
    ):
        assert key in one
    printed = json.loads(run_main(args, monkeypatch, capsys).out)
    assert printed == data
    table = run_main(args[:5], monkeypatch, capsys)
    assert table.code == 0 and "cio_cart_7d" in table.out and "no detectable lift" in table.out
    for bad_args in (["report", "--audience", "nope"], ["report", "--since", "yesterday"]):
        bad = run_main(bad_args, monkeypatch, capsys)
        assert bad.code != 0 and bad.err.startswith("error: ") and bad.err.count("\n") == 1


def test_report_needs_a_conversion_event_and_a_valid_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    plain = REPORT_YAML.split("destinations:", maxsplit=1)[0]
    (tmp_path / "cohortsync.yml").write_text(PROJECT_YAML + plain, encoding="utf-8")
    missing = run_main(["report"], monkeypatch, capsys)
    assert missing.code != 0 and "conversion event" in missing.err
    assert missing.err.startswith("error: ") and missing.err.count("\n") == 1
    bad = plain + "report: {window: soon}\n"
    (tmp_path / "cohortsync.yml").write_text(PROJECT_YAML + bad, encoding="utf-8")
    wrong = run_main(["report"], monkeypatch, capsys)
    assert wrong.code != 0 and "window" in wrong.err and "Traceback" not in wrong.err
    chosen = plain + "report: {window: 1d, conversion_event: signed_up}\n"
    (tmp_path / "cohortsync.yml").write_text(PROJECT_YAML + chosen, encoding="utf-8")
    fine = run_main(["report", "--format", "json"], monkeypatch, capsys)
    assert fine.code == 0, fine.err
    assert json.loads(fine.out)["conversion_event"] == "signed_up"
    assert json.loads(fine.out)["window"] == "1d"


def _one(x_t: int, n_t: int, x_c: int, n_c: int) -> AudienceReport:
    return AudienceReport(
        "a", 50.0, Arm(n_t, x_t), Arm(n_c, x_c), lift(x_t, n_t, x_c, n_c),
        srm_p_value(n_t, n_c, 0.5), 0.0, None, None,
    )  # fmt: skip


def test_verdicts_say_only_what_the_figures_allow() -> None:
    assert verdict(_one(120, 1000, 90, 1000)) == "lift: +3.0 pp, interval above zero"
    assert verdict(_one(90, 1000, 120, 1000)).startswith("negative lift: -3.0 pp")
    noise = _one(11, 100, 10, 100)
    assert noise.lift is not None and noise.lift.mde is not None
    assert verdict(noise) == f"no detectable lift yet (MDE {noise.lift.mde * 100:.1f} pp)"
    skewed = _one(120, 1000, 90, 800)
    assert skewed.srm_alert and verdict(skewed).startswith("do not read")


@pytest.mark.parametrize("engine", ["duckdb", "postgres"])
def test_an_entrant_later_merged_into_a_known_buyer_keeps_its_entry_and_conversion(
    tmp_path: Path, engine: str
) -> None:
    """An anonymous cart enters; the visitor then logs in as a customer known from before
    (its profile merges into theirs) and buys: one entrant, one conversion."""
    anon = {"type": "track", "messageId": "anon-cart", "anonymousId": "anon-7",
            "event": "added_to_cart", "timestamp": stamp(T), "properties": {}}  # fmt: skip
    login = {"type": "identify", "messageId": "anon-login", "anonymousId": "anon-7",
             "userId": "m1", "timestamp": stamp(ENTRY + H), "traits": {}}  # fmt: skip
    with project(tmp_path, engine) as root, Engine.open(root) as shop:
        shop.ingest_messages([identify("m1", T - D, email="m1@example.com"), anon])
        shop.compute(ENTRY)
        entered = {m.profile_id for m in shop.members("cio_cart_7d")}
        shop.ingest_messages([login, track("m1", "order_completed", ENTRY + 2 * D, revenue=30.0)])
        survivor = shop.find_profile("user_id:m1").profile_id
        found = shop.report(T, T + 3 * D)
    assert len(entered) == 1 and entered != {survivor}  # the entrant's id was merged away
    one = found.audiences[0]
    assert one.treatment.profiles + one.holdout.profiles == 1
    assert one.treatment.converted + one.holdout.converted == 1
    assert one.treatment.revenue + one.holdout.revenue == pytest.approx(30.0)
