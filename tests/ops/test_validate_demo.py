"""`cohortsync validate --generate 12` on the demo shop: the cohort passes, every row is true of
the store and the destinations, test profiles stay out of `stats`, and `--cleanup` removes them
downstream (the warehouse shows them gone)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest
from typer.testing import CliRunner

from cohortsync.cli import app
from cohortsync.config.scaffold import scaffold_project
from cohortsync.engine import Engine
from tests.ops.cli_main import run_main

DOMAIN = "example.com"


@dataclass
class Validated:
    folder: Path
    output: dict[str, Any]
    exit_code: int
    stats_before: dict[str, Any]
    stats_after: dict[str, Any]


def cli(*args: str) -> Any:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    return result


def warehouse_emails(folder: Path) -> set[tuple[str, str]]:
    """(audience, email) of the test profiles the demo's warehouse holds as members."""
    with duckdb.connect(str(folder / ".cohortsync" / "warehouse.duckdb"), read_only=True) as con:
        rows = con.sql(
            "SELECT audience, email FROM cohortsync.audience_members "
            f"WHERE email LIKE 'test+%@{DOMAIN}'"
        ).fetchall()
    return {(str(a), str(e)) for a, e in rows}


@pytest.fixture(scope="module")
def validated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Validated]:
    """The demo shop (300 shoppers, synced), then `validate --generate 12` on it."""
    folder = tmp_path_factory.mktemp("demo")
    scaffold_project(folder)
    with Engine.open(folder) as engine:
        engine.load_demo(300, seed=7, now=datetime.now(UTC))
        engine.compute()
        engine.sync()
        before = engine.stats()
    result = cli("validate", "-p", str(folder), "--generate", "12", "--domain", DOMAIN, "--json")
    with Engine.open(folder) as engine:
        after = engine.stats()
    yield Validated(folder, json.loads(result.stdout), result.exit_code, before, after)


def test_validate_generate_12_passes_on_the_demo(validated: Validated) -> None:
    out = validated.output
    assert validated.exit_code == 0, out
    assert out["passed"] is True and out["profiles"] == 12
    rows = out["rows"]
    assert rows and all(r["ok"] is True for r in rows)
    # every audience of the example project got a profile made for it and was checked
    with Engine.open(validated.folder) as engine:
        audiences = set(engine.segments.audiences)
    assert {r["audience"] for r in rows if r["step"] == "enter"} == audiences
    steps = {(r["step"], r["expected"]) for r in rows}
    assert ("purchase", "leaves") in steps and ("purchase", "enters") in steps
    assert any(
        r["audience"] == "cio_recent_purch_7d_suppress" and r["expected"] == "enters" for r in rows
    )
    assert all("@" not in r["profile"] or "***" in r["profile"] for r in rows)  # masked


def test_rows_are_true_of_the_warehouse_and_the_dry_runs(validated: Validated) -> None:
    rows = validated.output["rows"]
    held = warehouse_emails(validated.folder)
    with Engine.open(validated.folder) as engine:
        emails = {f"t***+{n}@{DOMAIN}": f"test+{n}@{DOMAIN}" for n in range(1, 13)}
        for r in rows:
            email = emails[r["profile"]]
            member = (r["audience"], email) in held
            if r["destination"] == "warehouse" and r["expected"] in ("member", "enters"):
                # still a member now unless the purchase took it out afterwards
                left = any(
                    x["profile"] == r["profile"]
                    and x["audience"] == r["audience"]
                    and x["expected"] == "leaves"
                    for x in rows
                )
                assert member != left, r
            if r["destination"] == "warehouse" and r["expected"] == "leaves":
                assert not member, r
        # the meta_ads dry run holds the hashed email of a profile acknowledged there
        folder = validated.folder / ".cohortsync" / "dry-run" / "meta_ads"
        written = "".join(p.read_text() for p in folder.glob("*.json"))
        for r in rows:
            if r["destination"] == "meta_ads" and r["acknowledged"] == "dry run written":
                digest = hashlib.sha256(emails[r["profile"]].encode()).hexdigest()
                assert digest in written, r
                assert emails[r["profile"]] not in written  # never the raw address
        assert engine.find_profile(f"email:test+1@{DOMAIN}") is not None


def test_test_profiles_are_left_out_of_stats(validated: Validated) -> None:
    before, after = validated.stats_before, validated.stats_after
    assert after["profiles"]["total"] == before["profiles"]["total"]
    assert after["events"]["total"] == before["events"]["total"]
    assert after["test_profiles"]["total"] == 12
    assert after["test_profiles"]["events"] > 12
    assert before["test_profiles"] == {"total": 0, "events": 0}


def test_a_second_run_asks_for_cleanup_first(
    validated: Validated, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["validate", "-p", str(validated.folder), "--generate", "12", "--domain", DOMAIN]
    ran = run_main(args, monkeypatch, capsys)
    assert ran.code == 1
    assert ran.err.startswith("error: 12 test profiles of an earlier validate remain")
    assert "validate --cleanup" in ran.err and "Traceback" not in ran.err


def test_cleanup_removes_them_downstream(validated: Validated) -> None:
    """Last in this module: it empties the store of the cohort the other tests read."""
    assert warehouse_emails(validated.folder)  # members downstream before
    result = cli("validate", "-p", str(validated.folder), "--cleanup", "--json")
    assert result.exit_code == 0, result.output
    done = json.loads(result.stdout)
    assert done["done"] is True and done["profiles"] == 12 and done["still_held"] == {}
    assert done["removes_queued"] > 0
    assert warehouse_emails(validated.folder) == set()
    with Engine.open(validated.folder) as engine:
        stats = engine.stats()
        assert stats["test_profiles"] == {"total": 0, "events": 0}
        assert stats["profiles"]["total"] == validated.stats_before["profiles"]["total"]
        assert engine.store.find_profile("email", f"test+1@{DOMAIN}") is None
        status = {(s.destination, s.audience): s for s in engine.sync_status()}
        assert all(s.pending == 0 for s in status.values())
