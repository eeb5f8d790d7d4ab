"""`cohortsync catalog`: the rules in English, the store's true sizes, the lock's history, in
Markdown, one escaped HTML page, or JSON."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from cohortsync.cli import app
from cohortsync.engine import Engine
from tests.ops.conftest import T, edit

RUNNER = CliRunner()

CART_ENTERS = (
    "Enters when it added to cart within the last 7 days and has not ordered within the last "
    "3 days."
)
CART_LEAVES = "Leaves when it orders, or 7 days after its latest add to cart."


def catalog(folder: Path, *args: str) -> str:
    result = RUNNER.invoke(app, ["catalog", *args, "--project", str(folder)])
    assert result.exit_code == 0, result.output
    return result.stdout


def accepted_twice(folder: Path) -> None:
    """Lock, then raise the holdout as version 2 and accept it."""
    with Engine.open(folder) as engine:
        engine.lock()
    edit(folder, "holdout: {percent: 20}", "holdout: {percent: 30}\n    version: 2")
    with Engine.open(folder) as engine:
        engine.lock(["cio_cart_7d"])
        engine.compute(T)


def test_the_json_catalog_holds_rules_true_sizes_and_history(shop_dir: Path) -> None:
    accepted_twice(shop_dir)
    value = json.loads(catalog(shop_dir, "--format", "json"))
    entries = {e["name"]: e for e in value["audiences"]}
    cart = entries["cio_cart_7d"]
    assert (cart["entry_rule"], cart["exit_rule"]) == (CART_ENTERS, CART_LEAVES)
    with Engine.open(shop_dir) as engine:
        members = engine.members("cio_cart_7d")
    assert cart["size"] == len(members) > 0
    assert cart["holdout_size"] == sum(1 for m in members if m.holdout) > 0
    assert cart["holdout_percent"] == 30
    assert cart["holdout_sent_to"] == ["warehouse"] and cart["holdout_withheld_from"] == ["exports"]
    assert [h["version"] for h in cart["history"]] == [1, 2] and cart["version"] == 2
    assert cart["lock_state"] == "same" and cart["realtime_exits"] is False
    assert cart["last_computed"].startswith("2026-03-01T12:00:00")
    assert entries["cio_unsynced"]["lock_state"] == "unlocked"
    assert entries["cio_unsynced"]["history"] == []


def test_markdown_and_html_say_the_same_and_html_escapes(shop_dir: Path) -> None:
    edit(shop_dir, "has not bought in 3 days.", "has not bought in 3 days <script>x</script>.")
    accepted_twice(shop_dir)
    markdown = catalog(shop_dir)
    assert "## cio_cart_7d" in markdown
    assert f"- **Enters:** {CART_ENTERS}" in markdown
    assert f"- **Leaves:** {CART_LEAVES}" in markdown
    assert "| 2 | `sha256:" in markdown  # the accepted versions, one row each
    out = shop_dir / "docs" / "catalog.html"
    said = RUNNER.invoke(
        app, ["catalog", "--format", "html", "--out", str(out), "--project", str(shop_dir)]
    )
    assert said.exit_code == 0 and "wrote" in said.stdout
    page = out.read_text()
    assert page.startswith("<!doctype html>") and "<script>" not in page
    assert "&lt;script&gt;x&lt;/script&gt;" in page
    assert CART_ENTERS in page and "30% of members held back" in page
