"""The example project `cohortsync init` writes: it loads, parses, and runs on the demo shop."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlglot import exp

from cohortsync.config.loader import PROJECT_FILE, load_project, parse_project, parse_segments
from cohortsync.config.scaffold import WRITE_KEY_PLACEHOLDER, render_template, scaffold_project
from cohortsync.demo.shop import generate_shop
from cohortsync.engine import Engine
from cohortsync.segments.ast import After, All, Comparison, Duration, EventCondition
from cohortsync.segments.compile import DuckDBCompiler
from cohortsync.sync.configure import sync_setup

LOCKED_AUDIENCES = {
    "cio_cart_abandon_6h",
    "cio_browse_abandon_24h",
    "cio_lapsed_75d",
    "cio_lapsed_high_aov",
    "cio_lapsed_price_sensitive",
    "cio_replenish_30d",
    "cio_recent_purch_7d_suppress",
    "cio_active_subscribers_suppress",
    "cio_ltv_high",
    "cio_ltv_mid",
    "cio_ltv_low",
    "cio_nonconverter_msg1",
}


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COHORTSYNC_PROJECT", raising=False)
    monkeypatch.delenv("COHORTSYNC_WEB_WRITE_KEY", raising=False)


def test_template_parses_with_the_locked_audience_names(tmp_path: Path) -> None:
    text = render_template("wk_test_0123456789")
    assert WRITE_KEY_PLACEHOLDER not in text
    loaded = parse_project(text, tmp_path / PROJECT_FILE)
    project = parse_segments(loaded)

    assert set(project.audiences) == LOCKED_AUDIENCES
    assert {"ltv", "aov", "usually_discounted"} <= set(project.traits)
    assert project.audiences["cio_cart_abandon_6h"].holdout_percent == 10
    for audience in project.audiences.values():
        assert audience.identifiers == ("email", "phone")
        assert "warehouse" in audience.destinations
        assert audience.owner
        assert audience.description
        assert "Leaves" in audience.description or "leaves" in audience.description
    assert loaded.project.sources["web"].write_key == "wk_test_0123456789"
    setup = sync_setup(loaded, project)
    ads = {r.audience for r in setup.routes if r.destination == "meta_ads"}
    assert "cio_recent_purch_7d_suppress" in ads  # buyers are suppressed on Meta
    assert all(not r.include_holdout for r in setup.routes if r.destination == "meta_ads")
    for platform in ("google_ads", "tiktok_ads"):  # suppressed on every ad platform
        routes = [r for r in setup.routes if r.destination == platform]
        assert {r.audience for r in routes} == ads
        assert all(not r.include_holdout for r in routes)
    platforms = ("meta_ads", "meta_capi", "google_ads", "google_conversions", "tiktok_ads")
    assert all(setup.configs[name].dry_run for name in (*platforms, "tiktok_events"))
    streams = {r.destination for r in setup.conversion_routes}
    assert streams == {"warehouse", "meta_capi", "google_conversions", "tiktok_events"}


def test_init_project_loads_and_keeps_the_spine_keys(tmp_path: Path) -> None:
    scaffold_project(tmp_path)
    loaded = load_project(tmp_path)

    assert loaded.project.identity.primary == "email"
    assert loaded.project.sources["web"].write_key.startswith("wk_")
    assert "${COHORTSYNC_WEB_WRITE_KEY:-wk_" in (tmp_path / PROJECT_FILE).read_text("utf-8")
    assert set(parse_segments(loaded).audiences) == LOCKED_AUDIENCES


def test_every_audience_runs_on_the_demo_shop(tmp_path: Path) -> None:
    scaffold_project(tmp_path)
    now = datetime(2026, 6, 1, 12, tzinfo=UTC)
    at_us = int(now.timestamp() * 1_000_000)
    with Engine.open(tmp_path) as engine:
        engine.ingest_messages(generate_shop(600, seed=3, now=now))
        project = parse_segments(engine.loaded)
        sizes = {}
        for name, audience in project.audiences.items():
            compiler = DuckDBCompiler()
            query: exp.Query = compiler.compile_segment(audience.segment, project, at_us)
            for excluded in audience.exclude:
                query = exp.except_(
                    query, compiler.compile_segment(excluded, project, at_us), distinct=True
                )
            sizes[name] = len(engine.store.query(compiler.render(query)))

    # The broad audiences are never empty on the demo shop, even a small one.
    for name in ("cio_recent_purch_7d_suppress", "cio_ltv_high", "cio_ltv_mid", "cio_ltv_low"):
        assert sizes[name] > 0, sizes
    assert sizes["cio_lapsed_high_aov"] <= sizes["cio_lapsed_75d"]
    assert sizes["cio_lapsed_price_sensitive"] <= sizes["cio_lapsed_75d"]


def test_nonconverters_after_message_1_count_orders_in_the_24h_after_its_latest_delivery(
    tmp_path: Path,
) -> None:
    """`nonconverter_msg1` ties the 24h to the delivery: no order within 24h after the latest
    message 1, once those 24h are over; the audience also drops recent buyers."""
    scaffold_project(tmp_path)
    now = datetime(2026, 6, 1, 12, tzinfo=UTC)
    h = timedelta(hours=1)

    def track(user: str, event: str, ago: timedelta, **props: Any) -> dict[str, Any]:
        stamp = (now - ago).isoformat().replace("+00:00", "Z")
        return {"type": "track", "messageId": f"{user}-{event}-{ago}", "userId": user,
                "event": event, "timestamp": stamp, "properties": props}  # fmt: skip

    def delivered(user: str, campaign: str, ago: timedelta) -> dict[str, Any]:
        return track(user, "Email Delivered", ago, campaign_id=campaign)

    with Engine.open(tmp_path) as engine:
        engine.ingest_messages(
            [
                delivered("quiet", "cmp_welcome_1", 48 * h),
                delivered("converted", "cmp_welcome_1", 48 * h),
                track("converted", "Order Completed", 45 * h, revenue=30),
                delivered("late_buyer", "cmp_cart_recovery_1", 72 * h),
                track("late_buyer", "Order Completed", 40 * h, revenue=30),
                delivered("waiting", "cmp_welcome_1", 120 * h),
                delivered("waiting", "cmp_cart_recovery_1", 2 * h),
                delivered("newsletter", "cmp_newsletter_weekly", 48 * h),
            ]
        )
        project = parse_segments(engine.loaded)
        at_us = int(now.timestamp() * 1_000_000)
        compiler = DuckDBCompiler()
        users = dict(
            engine.store.query(
                "SELECT profile_id, value FROM identities WHERE kind = 'user_id'", ()
            )
        )

        def members(query: exp.Select) -> set[str]:
            return {users[row[0]] for row in engine.store.query(compiler.render(query))}

        segment = members(compiler.compile_segment("nonconverter_msg1", project, at_us))
        audience = members(compiler.compile_audience("cio_nonconverter_msg1", project, at_us))
    assert segment == {"quiet", "late_buyer"}
    assert audience == {"quiet"}

    rule = project.segments["nonconverter_msg1"].condition
    assert isinstance(rule, All)
    message_1 = (Comparison("campaign_id", "in", ("cmp_welcome_1", "cmp_cart_recovery_1")),)
    none_after = EventCondition(
        "order_completed",
        window=After("email_delivered", message_1, Duration("24h", 24 * 3_600_000_000)),
        count_op="eq",
        count=0,
    )
    assert replace(rule.conditions[-1], position=None) == none_after
