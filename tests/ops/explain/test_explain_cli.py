"""`cohortsync explain` and `cohortsync profile` as a user runs them: trees, tables, JSON, and
one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from cohortsync.cli import app
from cohortsync.engine import Engine
from tests.audiences.conftest import H, T, stamp
from tests.test_cli_errors import run_main


@pytest.fixture(autouse=True)
def _no_project_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COHORTSYNC_PROJECT", raising=False)


def invoke(*args: str) -> Result:
    return CliRunner(env={"COLUMNS": "250"}).invoke(app, list(args), catch_exceptions=True)


def test_explain_prints_the_tree_the_next_change_and_the_destinations(shop_dir: Path) -> None:
    with Engine.open(shop_dir) as engine:
        engine.sync()
    result = invoke("explain", "user_id:bob", "cio_cart_6h", "-p", str(shop_dir), "--at", stamp(T))
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "cio_cart_6h — " in text and ("IN cio_cart_6h" in text or "HELD OUT" in text)
    assert "✓ it added to cart within the last 6 hours (1 matching; needs gte 1)" in text
    assert f"added_to_cart at {stamp(T - 5 * H)}" in text
    assert "✗ in segment bought_7d" in text
    assert f"next change: leaves at {stamp(T + H)}: the added_to_cart of {stamp(T - 5 * H)}" in text
    assert "downstream (now)" in text and "warehouse" in text and "meta_ads (dry run)" in text
    assert "evaluated from the event log as of that instant" in text
    assert "bob@example.com" not in result.output


def test_explain_json_has_the_documented_shape(shop_dir: Path) -> None:
    result = invoke(
        "explain", "email:CY@example.com", "-p", str(shop_dir), "--at", stamp(T), "--json"
    )
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert set(shown) == {"profile_id", "at", "past", "events", "audiences"}
    cart = next(a for a in shown["audiences"] if a["audience"] == "cio_cart_6h")
    assert set(cart) == {
        "audience", "segment", "status", "reason", "excluded_by", "holdout_percent", "refresh",
        "recorded", "trace", "next_change", "downstream",
    }  # fmt: skip
    assert (cart["status"], cart["excluded_by"]) == ("out", ["bought_7d"])
    assert set(cart["downstream"][0]) == {
        "destination", "status", "detail", "holds", "dry_run", "takes_holdout", "queued",
        "last_delivery",
    }  # fmt: skip
    assert "cy@example.com" not in result.output


def test_an_unknown_audience_is_one_line_with_a_suggestion(
    shop_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ran = run_main(
        ["explain", "user_id:bob", "cio_kart_6h", "-p", str(shop_dir)], monkeypatch, capsys
    )
    assert ran.code == 1
    assert ran.stderr.strip() == "error: no audience named 'cio_kart_6h': did you mean cio_cart_6h?"


def test_an_unknown_profile_or_instant_is_one_line_and_masks_the_identifier(
    shop_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ran = run_main(
        ["explain", "email:nobody@example.com", "-p", str(shop_dir)], monkeypatch, capsys
    )
    assert (ran.code, ran.stderr.strip()) == (1, "error: no profile has email no…om")
    bad = run_main(
        ["explain", "user_id:bob", "-p", str(shop_dir), "--at", "yesterday"], monkeypatch, capsys
    )
    assert bad.code == 1 and bad.stderr.startswith("error: --at ")
    assert len(bad.stderr.strip().splitlines()) == 1


def test_profile_lists_the_audiences_the_profile_is_in_now(shop_dir: Path) -> None:
    result = invoke("profile", "user_id:eve", "-p", str(shop_dir), "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["memberships"] == [{"audience": "cio_vip", "holdout": False, "since": stamp(T)}]
    table = invoke("profile", "user_id:eve", "-p", str(shop_dir))
    assert "audiences now" in table.output and "cio_vip" in table.output
    none = json.loads(invoke("profile", "user_id:cy", "-p", str(shop_dir), "--json").output)
    assert none["memberships"] == []
