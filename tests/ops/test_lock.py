"""cohortsync.lock: written for synced audiences, and compute, sync and serve refusing a project
that breaks it until the change is versioned and accepted."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

import cohortsync
from cohortsync.cli import app
from cohortsync.engine import Engine
from cohortsync.errors import InputError
from tests.ops.conftest import D, T, edit, warehouse_members
from tests.test_cli import SCRIPT

RUNNER = CliRunner()
SOURCE = str(Path(cohortsync.__file__).parents[1])  # the code under test, not an installed one

HOLDOUT_REFUSAL = (
    "cohortsync.yml:{line}: audience cio_cart_7d: its holdout changed since cohortsync.lock "
    "locked version 1, and version: was not raised — raise version: to 2, check who enters "
    "and leaves with `cohortsync plan`, then run `cohortsync lock --accept cio_cart_7d` (or "
    "undo the change)"
)


def cli(folder: Path, *args: str) -> tuple[int, str]:
    """Exit code and output of a command; a refusal's message as its output (main() prints
    it on stderr, as the script tests below check)."""
    result = RUNNER.invoke(app, [*args, "--project", str(folder)])
    if isinstance(result.exception, InputError):
        return 1, str(result.exception)
    return result.exit_code, result.output


def locked(folder: Path) -> dict[str, dict[str, object]]:
    value = json.loads((folder / "cohortsync.lock").read_text())
    return value["audiences"]  # type: ignore[no-any-return]


def audience_line(folder: Path, name: str) -> int:
    lines = (folder / "cohortsync.yml").read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if line.strip() == f"{name}:")


def test_lock_holds_every_synced_audience_and_is_stable(shop_dir: Path) -> None:
    code, out = cli(shop_dir, "lock", "--json")
    assert code == 0, out
    report = json.loads(out)
    assert report["written"] and sorted(report["added"]) == ["cio_big_spenders", "cio_cart_7d"]
    assert "cio_unsynced" in report["notes"]  # no destination: never synced, not locked
    entries = locked(shop_dir)
    assert sorted(entries) == ["cio_big_spenders", "cio_cart_7d"]
    cart = entries["cio_cart_7d"]
    assert cart["version"] == 1 and cart["destinations"] == ["exports", "warehouse"]
    assert [h["version"] for h in cart["history"]] == [1]  # type: ignore[attr-defined]
    before = (shop_dir / "cohortsync.lock").read_bytes()
    code, out = cli(shop_dir, "lock")
    assert code == 0 and "unchanged" in out
    assert (shop_dir / "cohortsync.lock").read_bytes() == before


def test_a_changed_audience_is_refused_by_compute_sync_and_serve(shop_dir: Path) -> None:
    assert cli(shop_dir, "lock")[0] == 0
    edit(shop_dir, "holdout: {percent: 20}", "holdout: {percent: 50}")
    expected = HOLDOUT_REFUSAL.format(line=audience_line(shop_dir, "cio_cart_7d"))
    with Engine.open(shop_dir) as engine:
        for attempt in (lambda: engine.compute(T + D), engine.sync, engine.serve_workers):
            with pytest.raises(InputError) as refused:
                attempt()
            assert str(refused.value).endswith(expected)
    # the real command: one line on stderr, exit 1, no traceback; serve never starts
    for command in (["compute"], ["sync"], ["serve", "--port", "1"]):
        done = subprocess.run(
            [str(SCRIPT), *command],
            cwd=shop_dir,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "COLUMNS": "400", "NO_COLOR": "1", "PYTHONPATH": SOURCE},
            check=False,
        )
        assert done.returncode == 1, done.stdout + done.stderr
        assert done.stderr.strip() == f"error: {expected}"
        assert "listening" not in done.stdout


def test_raising_the_version_lets_compute_run_and_lock_accept_records_it(
    shop_dir: Path,
) -> None:
    assert cli(shop_dir, "lock")[0] == 0
    edit(shop_dir, "holdout: {percent: 20}", "holdout: {percent: 50}")
    code, out = cli(shop_dir, "lock", "--accept", "cio_cart_7d")
    assert code == 1 and "raise version: to 2 first" in out
    edit(shop_dir, "    holdout: {percent: 50}", "    holdout: {percent: 50}\n    version: 2")
    assert cli(shop_dir, "compute", "--at", (T + D).isoformat())[0] == 0
    code, out = cli(shop_dir, "lock", "--json")  # a plain lock leaves the change unrecorded
    assert "lock --accept cio_cart_7d" in json.loads(out)["notes"]["cio_cart_7d"]
    assert locked(shop_dir)["cio_cart_7d"]["version"] == 1
    code, out = cli(shop_dir, "lock", "--accept", "cio_cart_7d")
    assert code == 0, out
    cart = locked(shop_dir)["cio_cart_7d"]
    assert cart["version"] == 2
    history = cart["history"]
    assert [h["version"] for h in history] == [1, 2]  # type: ignore[attr-defined]
    assert history[0]["fingerprint"] != history[1]["fingerprint"] == cart["fingerprint"]  # type: ignore[index]
    with Engine.open(shop_dir) as engine:
        engine.check_lock()  # accepted: nothing refused


def test_a_synced_audience_gone_from_the_project_is_refused(shop_dir: Path) -> None:
    assert cli(shop_dir, "lock")[0] == 0
    edit(
        shop_dir,
        "  cio_big_spenders:\n    segment: big_spender\n",
        "  cio_rich:\n    segment: big_spender\n",
    )
    code, out = cli(shop_dir, "compute")
    assert code == 1
    assert (
        "cohortsync.lock: audience cio_big_spenders was synced but is gone from the project — "
        "put it back with retired: true" in " ".join(out.split())
    )


def test_a_retired_audience_is_emptied_downstream_then_may_leave(shop_on_both: Path) -> None:
    assert cli(shop_on_both, "lock")[0] == 0
    assert len(warehouse_members(shop_on_both, "cio_cart_7d")) > 0
    edit(
        shop_on_both,
        "    segment: carted_7d\n    exclude",
        "    segment: carted_7d\n    retired: true\n    exclude",
    )
    _, out = cli(shop_on_both, "lock", "--json")
    assert "still hold" in json.loads(out)["notes"]["cio_cart_7d"]
    assert locked(shop_on_both)["cio_cart_7d"]["retired_at"] is None
    with Engine.open(shop_on_both) as engine:
        report = engine.compute(T + D)
        assert report.row("cio_cart_7d").size == 0 and report.row("cio_cart_7d").exited
        engine.sync(clock=lambda: T + D)
    assert warehouse_members(shop_on_both, "cio_cart_7d") == set()
    csv = sorted((shop_on_both / "exports").rglob("*.csv"))
    assert csv, "the files destination wrote its snapshots"
    _, out = cli(shop_on_both, "lock", "--json")
    assert json.loads(out)["retired"] == ["cio_cart_7d"]
    assert locked(shop_on_both)["cio_cart_7d"]["retired_at"] is not None
    text = (shop_on_both / "cohortsync.yml").read_text()
    start = text.index("  cio_cart_7d:")
    end = text.index("  cio_big_spenders:")
    (shop_on_both / "cohortsync.yml").write_text(text[:start] + text[end:])
    with Engine.open(shop_on_both) as engine:
        engine.check_lock()  # retired and empty: removing it is fine


def test_a_broken_lock_file_is_one_line_saying_what_to_do(shop_dir: Path) -> None:
    (shop_dir / "cohortsync.lock").write_text('{"format": 1, "audiences": {"x": {}}}\n')
    code, out = cli(shop_dir, "compute")
    assert code == 1
    assert out == (
        "cohortsync.lock: cannot be read (an audience has no 'fingerprint') — restore it from "
        "version control, or delete it and run `cohortsync lock` to lock every synced audience "
        "afresh"
    )
