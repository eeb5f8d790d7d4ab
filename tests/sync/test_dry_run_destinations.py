"""A destination set `dry_run: true` is written, never sent: `serve` writes its batches once, as
`sync` does, `status` says "dry run", and the destination going live (or back) loses nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from cohortsync.cli import app
from cohortsync.engine import Engine
from cohortsync.sync.retry import RetryPolicy
from tests.sync.conftest import MIN, SYNC_YAML, T0, Clock, H, person, track
from tests.sync.scripted import Remote

AUDIENCE = "cio_cart_1h"
DRY = SYNC_YAML.replace("remote: ads}", "remote: ads, dry_run: true}")


def configure(project: Path, dry: bool) -> None:
    """The shop's project file, with `ads` a dry-run destination or a live one."""
    base = (project / "cohortsync.yml").read_text(encoding="utf-8").split("segments:")[0]
    text = base + (DRY if dry else SYNC_YAML)
    (project / "cohortsync.yml").write_text(text, encoding="utf-8")


@pytest.fixture
def project(project_on_both: Path, remotes: dict[str, Remote]) -> Path:
    (project_on_both / "cohortsync.yml").write_text(
        (project_on_both / "cohortsync.yml").read_text(encoding="utf-8") + DRY, encoding="utf-8"
    )
    with Engine.open(project_on_both) as engine:
        engine.ingest_messages([person(n, T0 - H) for n in range(8)])
        engine.ingest_messages([track(n, "added_to_cart", T0) for n in range(8)])
        engine.ingest_messages([track(1, "order_completed", T0, revenue=12.0)])
        engine.compute(T0)
    return project_on_both


@pytest.fixture
def served(project: Path) -> Iterator[Engine]:
    with Engine.open(project) as engine:
        yield engine


def written(project: Path) -> list[dict[str, Any]]:
    folder = project / ".cohortsync" / "dry-run" / "ads"
    return [orjson.loads(p.read_bytes()) for p in sorted(folder.glob("*.json"))]


def ads_members(engine: Engine) -> set[str]:
    return {m.profile_id for m in engine.members(AUDIENCE) if not m.holdout}


def serve_round(engine: Engine, clock: Clock) -> None:
    """One round of what `serve` runs to deliver (its thread's step, run here)."""
    delivery = engine.serve_workers(clock).delivery
    try:
        delivery.step()
    finally:
        delivery.close()


def test_serve_writes_dry_run_files_once_and_status_says_dry_run(
    served: Engine, project: Path, remotes: dict[str, Remote], clock: Clock
) -> None:
    members = ads_members(served)
    serve_round(served, clock)
    files = written(project)
    assert sum(f["records"] for f in files) == len(members) + 1  # the adds and the order
    assert remotes["ads"].attempts == []
    lines = {s.audience: s for s in served.sync_status() if s.destination == "ads"}
    line = lines[AUDIENCE]
    assert line.dry_run and (line.pending, line.dry_run_written) == (0, len(members))
    assert line.acknowledged == 0  # the platform holds nothing
    assert (lines[None].pending, lines[None].dry_run_written) == (0, 1)
    serve_round(served, clock)
    assert len(written(project)) == len(files)  # nothing new: nothing written again
    status = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["status", "--project", str(project)])
    assert f"{len(members)} dry run" in status.stdout
    newcomers = range(20, 23)  # later carts: written after, under the next numbers
    served.ingest_messages([person(n, T0) for n in newcomers])
    served.ingest_messages([track(n, "added_to_cart", T0 + MIN) for n in newcomers])
    served.compute(T0 + 2 * MIN)
    serve_round(served, clock)
    names = sorted(p.name for p in (project / ".cohortsync" / "dry-run" / "ads").glob("*"))
    numbers = [int(name.split("-", 1)[0]) for name in names]
    assert len(names) > len(files) and numbers == list(range(1, len(names) + 1))


def test_a_destination_gone_live_is_sent_every_member(
    project: Path, remotes: dict[str, Remote], clock: Clock, policy: RetryPolicy
) -> None:
    with Engine.open(project) as engine:
        engine.sync(clock=clock, policy=policy)
        members = ads_members(engine)
    assert remotes["ads"].members == {}
    configure(project, dry=False)
    with Engine.open(project) as engine:
        engine.sync(clock=clock, policy=policy)
        line = next(s for s in engine.sync_status() if s.destination == "ads" and s.audience)
    assert {key.split("/", 1)[1] for key in remotes["ads"].members} == members
    assert (line.acknowledged, line.dry_run_written, line.dry_run) == (len(members), 0, False)


def test_a_remove_written_while_dry_reaches_the_destination_once_live_again(
    project: Path, remotes: dict[str, Remote], clock: Clock, policy: RetryPolicy
) -> None:
    configure(project, dry=False)
    with Engine.open(project) as engine:
        engine.sync(clock=clock, policy=policy)
    held = set(remotes["ads"].members)
    assert held
    configure(project, dry=True)
    with Engine.open(project) as engine:
        engine.compute(T0 + 2 * H)  # every cart is over an hour old: everyone leaves
        engine.sync(clock=clock, policy=policy)
    assert set(remotes["ads"].members) == held  # a dry run sent nothing
    assert any(f["would_send"] for f in written(project))
    configure(project, dry=False)
    with Engine.open(project) as engine:
        engine.sync(clock=clock, policy=policy)
    assert remotes["ads"].members == {}
