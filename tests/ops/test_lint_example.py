"""The example project passes lint with no errors on the demo shop's data; without a compute,
only the static rules run and the report says so."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cohortsync.cli import app
from cohortsync.config.scaffold import scaffold_project
from cohortsync.engine import Engine

AT = datetime(2026, 5, 1, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COHORTSYNC_PROJECT", raising=False)


def test_example_project_has_no_errors_on_the_demo_shop(tmp_path: Path) -> None:
    scaffold_project(tmp_path)
    with Engine.open(tmp_path) as engine:
        engine.load_demo(2_000, 7, AT)
        engine.compute(AT)
    result = CliRunner().invoke(app, ["lint", "--project", str(tmp_path), "--format", "json"])
    report = json.loads(result.stdout)
    assert report["errors"] == 0, [f for f in report["findings"] if f["severity"] == "error"]
    assert result.exit_code == 0
    assert report["measured"] is True
    assert report["as_of"].startswith("2026-05-01T00:00:00")
    # Figures are measured: the small demo's audiences sit under each platform's usable minimum
    # (Meta and Google about 100 people, TikTok about 1,000).
    small = [f for f in report["findings"] if f["code"] == "CS104"]
    assert small and all(f["severity"] == "warning" for f in small)
    minimum = {"meta_ads": 100, "exports": 100, "google_ads": 100, "tiktok_ads": 1_000}
    assert all(0 <= f["figure"] < minimum[f["destination"]] for f in small)
    assert {f["destination"] for f in small} == set(minimum)


def test_without_a_compute_only_static_rules_run(tmp_path: Path) -> None:
    scaffold_project(tmp_path)
    text = (tmp_path / "cohortsync.yml").read_text(encoding="utf-8")
    text = text.replace(
        "    owner: retention@shop.example.com\n    description: Enters when lifetime revenue "
        "reaches $150.",
        "    description: Enters when lifetime revenue reaches $150.",
    )
    (tmp_path / "cohortsync.yml").write_text(text, encoding="utf-8")
    result = CliRunner().invoke(app, ["lint", "--project", str(tmp_path)])
    assert result.exit_code == 0, result.stdout
    said = " ".join(result.stdout.split())
    assert "warning CS111 cio_ltv_high" in said
    assert "cio_ltv_high has no owner" in said
    assert "fix: add owner: to cio_ltv_high" in said
    assert "not measured: nothing was computed yet" in said
    assert said.endswith("0 error(s), 1 warning(s)")
