"""Generated test profiles: each audience of the example project gets events the evaluator
confirms put a profile in it (and keep it there while the run lasts); an audience no events
can reach is reported, not skipped; a holdout member is checked to be kept from ad platforms."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cohortsync.config.loader import load_project, parse_segments
from cohortsync.config.scaffold import scaffold_project
from cohortsync.ops.validate_cohort import generate
from cohortsync.ops.validate_model import audiences_of, history
from tests.conftest import PROJECT_YAML
from tests.ops.cli_main import run_main

NOW = 1_780_000_000_000_000
HORIZON = 30 * 60_000_000


def test_every_example_audience_gets_a_profile_that_stays_in(tmp_path: Path) -> None:
    scaffold_project(tmp_path)
    project = parse_segments(load_project(tmp_path))
    profiles, missed = generate(12, "example.com", project, NOW, HORIZON)
    assert missed == {}
    assert [p.email for p in profiles] == [f"test+{n}@example.com" for n in range(1, 13)]
    assert {p.target for p in profiles} == set(project.audiences)
    for p in profiles:
        assert p.target in p.expect
        # the evaluator finds it in the same audiences from now to the end of the horizon
        for at in (NOW, NOW + HORIZON // 3, NOW + HORIZON):
            assert audiences_of(project, history(p, NOW), (at,)) == p.expect, p.target
    cart = next(p for p in profiles if p.target == "cio_cart_abandon_6h")
    (event,) = cart.events
    assert event.event == "added_to_cart"
    assert event.ago_us > 2 * 3600e6 and event.ago_us + HORIZON < 6 * 3600e6


def test_an_audience_no_events_can_reach_is_reported(tmp_path: Path) -> None:
    (tmp_path / "cohortsync.yml").write_text(
        PROJECT_YAML
        + """\
segments:
  viewer: {event: product_viewed, within: 1d}
  never: {all: [{event: x, count: {eq: 0}}, {event: x, within: 1d}]}
audiences:
  cio_viewers: {segment: viewer}
  cio_impossible: {segment: never}
""",
        encoding="utf-8",
    )
    project = parse_segments(load_project(tmp_path))
    profiles, missed = generate(2, "example.com", project, NOW, HORIZON)
    assert [p.target for p in profiles] == ["cio_viewers", "cio_viewers"]
    assert set(missed) == {"cio_impossible"}
    assert "no events found" in missed["cio_impossible"]


def test_a_holdout_member_is_checked_to_be_kept_from_ad_platforms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "cohortsync.yml").write_text(
        PROJECT_YAML
        + """\
segments:
  viewer: {event: product_viewed, within: 1d}
audiences:
  cio_viewers:
    segment: viewer
    holdout: {percent: 99.99}
    destinations: [exports, warehouse]
destinations:
  exports: {type: files, path: exports, platform: meta}
  warehouse: {type: warehouse, url: "duckdb:///.cohortsync/warehouse.duckdb"}
""",
        encoding="utf-8",
    )
    args = ["validate", "-p", str(tmp_path), "--generate", "1", "--domain", "example.com"]
    ran = run_main([*args, "--json"], monkeypatch, capsys)
    assert ran.code == 0, ran.out + ran.err
    rows = {r["destination"]: r for r in json.loads(ran.out)["rows"] if r["step"] == "enter"}
    assert rows["exports"]["seen"] == "member (holdout)"
    assert rows["exports"]["acknowledged"] == "held out: not sent" and rows["exports"]["ok"]
    assert rows["warehouse"]["acknowledged"] == "acknowledged" and rows["warehouse"]["ok"]
