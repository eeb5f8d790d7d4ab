"""`cohortsync demo` ends with the example project locked and its catalog written, so the
project it leaves computes again as it is."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from cohortsync.cli import app


def test_the_demo_locks_its_audiences_and_writes_the_catalog(tmp_path: Path) -> None:
    runner = CliRunner()
    target = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--profiles", "300", "--project", str(target)])
    assert result.exit_code == 0, result.output
    locked = json.loads((target / "cohortsync.lock").read_text())["audiences"]
    assert "cio_cart_abandon_6h" in locked and "cio_recent_purch_7d_suppress" in locked
    markdown = (target / ".cohortsync" / "catalog.md").read_text()
    page = (target / ".cohortsync" / "catalog.html").read_text()
    assert "## cio_recent_purch_7d_suppress" in markdown and "cio_cart_abandon_6h" in page
    assert "Leaves 7 days after its latest order." in markdown
    assert "audiencecatalog:" in "".join(result.stdout.split())
    again = runner.invoke(app, ["compute", "--project", str(target)])
    assert again.exit_code == 0, again.output
    plan = runner.invoke(app, ["plan", "--json", "--project", str(target)])
    assert json.loads(plan.stdout)["audiences"] == []
