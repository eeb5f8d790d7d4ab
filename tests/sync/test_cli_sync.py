"""`cohortsync sync`, `status` and `normalize` from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from cohortsync.cli import app
from cohortsync.engine import Engine
from tests.sync.conftest import T0, track
from tests.sync.scripted import Remote


@pytest.fixture(autouse=True)
def _no_project_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COHORTSYNC_PROJECT", raising=False)


def invoke(*args: str) -> Result:
    return CliRunner(env={"COLUMNS": "200"}).invoke(app, list(args), catch_exceptions=True)


@pytest.fixture
def computed(shop: Engine, sync_dir: Path) -> Path:
    shop.ingest_messages([track(n, "added_to_cart", T0) for n in range(6)])
    shop.compute(T0)
    shop.close()
    return sync_dir


def test_sync_then_status(computed: Path, remotes: dict[str, Remote]) -> None:
    result = invoke("sync", "--project", str(computed), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    acknowledged = {(r["destination"], r["audience"]): r["acknowledged"] for r in report["routes"]}
    assert acknowledged[("wh", "cio_cart_1h")] == 6
    assert len(remotes["wh"].members) == 6
    status = invoke("status", "--project", str(computed))
    assert status.exit_code == 0, status.output
    assert "cio_cart_1h" in status.stdout and "100%" in status.stdout
    as_json = json.loads(invoke("status", "--project", str(computed), "--json").stdout)
    assert as_json["runs"][0]["acknowledged"] == sum(acknowledged.values())


def test_dry_run_prints_where_requests_went(computed: Path, remotes: dict[str, Remote]) -> None:
    result = invoke("sync", "--project", str(computed), "--dry-run", "--destination", "wh")
    assert result.exit_code == 0, result.output
    assert "dry run" in result.stdout
    assert list((computed / ".cohortsync" / "dry-run" / "wh").glob("*.json"))
    assert remotes["wh"].attempts == []


def test_unknown_audience_is_a_clear_error(computed: Path) -> None:
    result = invoke("sync", "--project", str(computed), "--audience", "nope")
    assert result.exit_code != 0
    assert "no audience named 'nope'" in str(result.exception)


@pytest.mark.parametrize(
    ("args", "normal", "digest"),
    [
        (
            ["email", "  John_Smith@Gmail.com "],
            "john_smith@gmail.com",
            "62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f",
        ),
        (
            ["phone", "+1 (650) 555-1212"],
            "16505551212",
            "e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176",
        ),
        (
            ["phone", "+1 (650) 555-1212", "--for", "google"],
            "+16505551212",
            "1e231c66011e7a2d867a9cfae267a6aff103cf4913640b6e71a99850fc0ffbc8",
        ),
    ],
)
def test_normalize_prints_the_published_vectors(args: list[str], normal: str, digest: str) -> None:
    result = invoke("normalize", *args, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "kind": args[0],
        "platform": args[3] if len(args) > 2 else "meta",
        "normalized": normal,
        "sha256": digest,
    }


def test_normalize_passes_a_hash_through_and_rejects_blanks() -> None:
    digest = "62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f"
    result = invoke("normalize", "email", digest.upper(), "--json")
    assert json.loads(result.stdout)["sha256"] == digest
    blank = invoke("normalize", "email", "   ")
    assert blank.exit_code != 0 and "nothing would be sent" in str(blank.exception)
