"""The example project `cohortsync init` writes: it loads, parses, and runs on the demo shop."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlglot import exp

from cohortsync.config.loader import PROJECT_FILE, load_project, parse_project, parse_segments
from cohortsync.config.scaffold import WRITE_KEY_PLACEHOLDER, render_template, scaffold_project
from cohortsync.demo.shop import generate_shop
from cohortsync.engine import Engine
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
    assert setup.configs["meta_ads"].dry_run and setup.configs["meta_capi"].dry_run
    assert [r.name for r in setup.conversion_routes] == ["Purchase", "Purchase"]


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
