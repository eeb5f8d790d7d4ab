"""`cohortsync ingest-spend` and `cohortsync report --format html|json` through the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cohortsync.cli import app
from cohortsync.engine import Engine
from cohortsync.errors import InputError
from tests.audiences.conftest import stamp
from tests.ops.cli_main import run_main
from tests.ops.report_projects import report_project
from tests.ops.test_report_discounts import YAML, D, T, build

SPEND = """\
date,destination,audience,spend,currency
2026-03-02,meta_ads,cio_cart_7d,120,USD
2026-03-03,meta_ads,cio_cart_7d,80,USD
2026-03-03,google_ads,cio_cart_7d,50,EUR
2026-03-03,meta_ads,cio_recent_purch_7d_suppress,10,USD
"""


@pytest.fixture(autouse=True)
def _no_project_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COHORTSYNC_PROJECT", raising=False)


@pytest.fixture
def shop_dir(tmp_path: Path) -> Path:
    """The discount test's shop: 30 carts with orders, on DuckDB."""
    with report_project(tmp_path, "duckdb", YAML) as root, Engine.open(root) as shop:
        build(shop)
    return root


def test_ingest_spend_prints_what_it_stored_and_a_bad_file_stores_nothing(
    shop_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    runner = CliRunner()
    good = shop_dir / "spend.csv"
    good.write_text(SPEND, encoding="utf-8")
    result = runner.invoke(app, ["ingest-spend", str(good), "--project", str(shop_dir)])
    assert result.exit_code == 0, result.output
    assert "4 rows" in result.output and "(0 replaced" in result.output
    assert re.search(r"EUR\s.*\s50\.00", result.output)
    assert re.search(r"USD\s.*\s210\.00", result.output)  # never added to the EUR row
    assert "no audience with a holdout is named cio_recent_purch_7d_suppress" in result.output

    again = runner.invoke(app, ["ingest-spend", str(good), "--project", str(shop_dir)])
    assert again.exit_code == 0 and "(4 replaced" in again.output

    bad = shop_dir / "bad.csv"
    bad.write_text(SPEND + "2026-03-04,meta_ads,cio_cart_7d,1.2.3,USD\n", encoding="utf-8")
    refused = runner.invoke(app, ["ingest-spend", str(bad), "--project", str(shop_dir)])
    assert isinstance(refused.exception, InputError)
    assert str(refused.exception).startswith(f"{bad}:6: spend '1.2.3' is not an amount")
    monkeypatch.chdir(shop_dir)
    printed = run_main(["ingest-spend", str(bad)], monkeypatch, capsys)
    assert printed.code == 1 and printed.err.startswith(f"error: {bad}:6: ")
    assert "Traceback" not in printed.err and "nothing of" in printed.err
    with Engine.open(shop_dir) as shop, shop.store.sql.reading() as tx:
        assert tx.run("SELECT count(*), sum(spend) FROM ad_spend") == [(4, 260.0)]


def test_report_writes_one_html_file_and_json_with_the_new_figures(
    shop_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    runner = CliRunner()
    (shop_dir / "spend.csv").write_text(SPEND, encoding="utf-8")
    runner.invoke(app, ["ingest-spend", str(shop_dir / "spend.csv"), "-p", str(shop_dir)])
    period = ["--since", stamp(T), "--until", stamp(T + 3 * D), "--project", str(shop_dir)]
    out = shop_dir / "reports" / "march.html"
    result = runner.invoke(app, ["report", *period, "--format", "html", "--out", str(out)])
    assert result.exit_code == 0, result.output
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>") and page.count('<svg class="chart"') >= 5
    assert "cio_cart_7d" in page and "USD 200.00" in page and "EUR 50.00" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.IGNORECASE)

    monkeypatch.chdir(shop_dir)
    printed = run_main(["report", *period, "--format", "json"], monkeypatch, capsys)
    assert printed.code == 0, printed.err
    data = json.loads(printed.out)
    assert data["suppression_audiences"] == ["cio_recent_purch_7d_suppress"]
    latency = data["latency"]  # 30 first orders (each caused an entry), 15 second ones; no sync
    assert (latency["purchases"], latency["purchases_with_change"]) == (45, 30)
    assert latency["purchases_without_acknowledged_change"] == 45
    (one,) = data["audiences"]
    assert one["treatment"]["discounted_orders"] + one["holdout"]["discounted_orders"] == 33
    assert one["suppression_failures"] == 15
    assert [s["currency"] for s in one["spend"]] == ["EUR", "USD"]
    assert [p["day"] for p in one["conversion_curve"]] == list(range(8))
    assert one["weeks"][0]["week"] == "2026-W10"
    assert "holdout conversion rate" in one["discount_spent_anyway_is"]
    table = run_main(["report", *period], monkeypatch, capsys)
    assert table.code == 0 and "Discounts and paid CAC" in table.out
    assert "Purchase → suppression acknowledged" in table.out
