"""`cohortsync compute`, `members` and `preview` on a real project, in-process and as a script."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from cohortsync.cli import app
from cohortsync.engine import Engine
from cohortsync.errors import InputError
from tests.audiences.conftest import AUDIENCE_YAML, H, T, identify, stamp, track
from tests.conftest import PROJECT_YAML

SCRIPT = Path(sys.executable).with_name("cohortsync")


@pytest.fixture(autouse=True)
def _no_project_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COHORTSYNC_PROJECT", raising=False)


@pytest.fixture
def shop_dir(project_dir: Path) -> Path:
    """A project with audiences; ann and bob abandoned carts, cy bought; computed at T, T+7h."""
    (project_dir / "cohortsync.yml").write_text(PROJECT_YAML + AUDIENCE_YAML, encoding="utf-8")
    with Engine.open(project_dir) as engine:
        engine.ingest_messages(
            [
                identify("ann", T - 48 * H, email="ann@example.com", phone="+14155550100"),
                track("ann", "Added To Cart", T - 1 * H),
                track("ann", "Product Viewed", T - 1 * H),
                track("bob", "Added To Cart", T - 2 * H),
                track("cy", "Added To Cart", T - 3 * H),
                track("cy", "Order Completed", T - 1 * H),
            ]
        )
    return project_dir


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), catch_exceptions=True)


def test_compute_prints_sizes_changes_and_duration(shop_dir: Path) -> None:
    result = invoke("compute", "--project", str(shop_dir), "--at", stamp(T))
    assert result.exit_code == 0, result.output
    for word in ("cio_cart_abandon_6h", "cart_abandon_6h", "entered", "exited", "holdout", "ms"):
        assert word in result.output
    later = invoke("compute", "--project", str(shop_dir), "--at", stamp(T + 7 * H), "--json")
    assert later.exit_code == 0, later.output
    rows = {(r["kind"], r["name"]): r for r in json.loads(later.output)["rows"]}
    assert rows[("audience", "cio_cart_abandon_6h")]["exited"] == 2
    assert (rows[("segment", "browsed_1d")]["size"], rows[("segment", "browsed_1d")]["exited"]) == (
        1,
        0,
    )  # a 1-day window: still in


def test_compute_says_when_it_only_evaluates_and_records_the_future_when_asked(
    shop_dir: Path,
) -> None:
    future = stamp(datetime.now(UTC) + timedelta(days=3))
    ahead = invoke("compute", "-p", str(shop_dir), "--at", future, "--json")
    assert ahead.exit_code == 0, ahead.output
    shown = json.loads(ahead.output)
    assert (shown["recorded"], shown["run_id"]) == (False, None)
    assert shown["reason"] == "in the future: add --record-future to record"
    assert {r["entered"] for r in shown["rows"]} == {None}  # nothing entered: nothing recorded
    table = invoke("compute", "-p", str(shop_dir), "--at", future)
    assert "evaluated, not recorded" in " ".join(table.output.split()), table.output

    done = invoke("compute", "-p", str(shop_dir), "--at", future, "--record-future", "--json")
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["recorded"] is True
    plain = invoke("compute", "-p", str(shop_dir))  # now is before the recorded future
    assert plain.exit_code == 0, plain.output
    said = " ".join(plain.output.split())
    assert "evaluated, not recorded (before the recorded history" in said, plain.output
    earlier = invoke("compute", "-p", str(shop_dir), "--at", stamp(T), "--json")
    assert earlier.exit_code == 0, earlier.output
    assert json.loads(earlier.output)["reason"].startswith("before the recorded history")


def test_members_in_table_json_and_csv_now_and_as_of_an_instant(shop_dir: Path) -> None:
    assert invoke("compute", "-p", str(shop_dir), "--at", stamp(T)).exit_code == 0
    assert invoke("compute", "-p", str(shop_dir), "--at", stamp(T + 7 * H)).exit_code == 0
    name = "cio_cart_abandon_6h"
    now = invoke("members", name, "-p", str(shop_dir), "--format", "json")
    assert now.exit_code == 0, now.output
    assert json.loads(now.output) == []
    past = invoke("members", name, "-p", str(shop_dir), "--at", stamp(T + H), "--format", "json")
    members = json.loads(past.output)
    assert {m["user_id"] for m in members} == {"ann", "bob"}
    ann = next(m for m in members if m["user_id"] == "ann")
    assert (ann["email"], ann["phone"]) == ("ann@example.com", "+14155550100")
    assert all(isinstance(m["holdout"], bool) for m in members)

    table = invoke("members", name, "-p", str(shop_dir), "--at", "2026-03-01T13:00:00")
    assert table.exit_code == 0, table.output
    assert "ann@example.com" in table.output and "2 members" in table.output

    out = invoke("members", name, "-p", str(shop_dir), "--at", stamp(T), "--format", "csv")
    assert out.exit_code == 0, out.output
    rows = list(csv.reader(io.StringIO(out.output)))
    assert rows[0] == ["profile_id", "user_id", "email", "phone", "holdout"]
    assert sorted(r[1] for r in rows[1:]) == ["ann", "bob"]


def test_preview_shows_size_sample_overlap_and_explanation(shop_dir: Path) -> None:
    result = invoke("preview", "cio_browse_1d", "-p", str(shop_dir))
    assert result.exit_code == 0, result.output
    for text in ("size", "sample", "overlap with audiences", "cio_cart_abandon_6h", "Enters when"):
        assert text in result.output
    shown = json.loads(invoke("preview", "cart_abandon_6h", "-p", str(shop_dir), "--json").output)
    assert shown["kind"] == "segment" and shown["size"] == 0  # the carts are long gone by now


def test_unknown_name_is_an_input_error_naming_close_names(shop_dir: Path) -> None:
    result = invoke("members", "cio_cart_abandon", "-p", str(shop_dir))
    assert result.exit_code == 1
    assert isinstance(result.exception, InputError)
    assert "did you mean cio_cart_abandon_6h" in str(result.exception)


def test_bad_at_is_one_line_error_from_the_real_command(shop_dir: Path) -> None:
    done = subprocess.run(
        [str(SCRIPT), "compute", "--project", str(shop_dir), "--at", "yesterday"],
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--at 'yesterday' is not ISO-8601" in lines[0], done.stderr
