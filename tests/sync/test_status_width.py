"""`cohortsync status` reads in an 80-column terminal; `--wide` and `--json` keep full names."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from rich.cells import cell_len
from rich.console import Console
from typer.testing import CliRunner

from cohortsync.cli import app
from cohortsync.engine import Engine
from cohortsync.render import status_table
from cohortsync.store.outbox import RouteStatus
from tests.sync.conftest import T0, track
from tests.sync.scripted import Remote

AT = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
AUDIENCE = "cio_active_subscribers_suppress_for_the_spring_campaign"
DESTINATION = "meta_custom_audience_production_eu"
# desired, acknowledged, pending, retrying, failed, dead: every figure distinct
FIGURES = (1_234_567, 1_200_001, 30_210, 3, 2_450, 17)
ROWS = [
    RouteStatus(DESTINATION, AUDIENCE, *FIGURES, 1_000_000, AT, AT, "400: (#2650) bad schema"),
    RouteStatus("warehouse", AUDIENCE, 1_234_567, 1_234_567, 0, 0, 0, 0, 1_234_567, AT, None, None),
    RouteStatus("meta_capi", None, 98_765, 0, 98_765, 0, 0, 0, 0, None, None, None),
]


def render(width: int, rows: list[RouteStatus] = ROWS) -> list[str]:
    console = Console(width=width, record=True, color_system=None)
    console.print(status_table(rows))
    return console.export_text().splitlines()


def test_status_fits_80_columns_with_every_figure_whole() -> None:
    lines = render(80)

    assert max(cell_len(line) for line in lines) <= 80
    header = next(line.split() for line in lines if "desired" in line)
    assert header[1:7] == ["desired", "acked", "pending", "retrying", "failed", "dead"]
    route = next(line.split() for line in lines if line.lstrip().startswith("meta_custo…"))
    assert route[1:7] == [f"{n:,}" for n in FIGURES]
    conversions = next(line.split() for line in lines if "meta_capi" in line)
    assert conversions[1:4] == ["98,765", "0", "98,765"]
    error = next(line for line in lines if "(#2650)" in line)  # below its route, full name
    assert f"{DESTINATION}: next try 12:00:00" in error


def test_status_keeps_one_line_per_route_when_the_terminal_has_room() -> None:
    lines = render(240)

    route = next(line for line in lines if DESTINATION in line)
    assert AUDIENCE in route
    assert all(f"{n:,}" in route for n in FIGURES)


def test_status_of_a_project_with_no_routes_yet_shows_the_columns() -> None:
    lines = render(80, rows=[])

    assert lines[1].split() == ["destination", "desired", "acked", "pending", "retrying",
                                "failed", "dead", "match", "last", "sync"]  # fmt: skip


@pytest.fixture
def synced(shop: Engine, sync_dir: Path, remotes: dict[str, Remote]) -> Path:
    shop.ingest_messages([track(n, "added_to_cart", T0) for n in range(6)])
    shop.compute(T0)
    shop.sync()
    shop.close()
    return sync_dir


def test_wide_and_json_print_each_route_whole_on_one_line(synced: Path) -> None:
    runner = CliRunner(env={"COLUMNS": "80", "COHORTSYNC_PROJECT": None})

    wide = runner.invoke(app, ["status", "--project", str(synced), "--wide"])
    narrow = runner.invoke(app, ["status", "--project", str(synced)])
    as_json = runner.invoke(app, ["status", "--project", str(synced), "--json"])

    assert wide.exit_code == narrow.exit_code == as_json.exit_code == 0, wide.output
    assert any("cio_cart_1h" in line and " wh " in line for line in wide.stdout.splitlines())
    assert max(len(line.rstrip()) for line in wide.stdout.splitlines()) > 80
    assert max(len(line) for line in narrow.stdout.splitlines()) <= 80
    routes = json.loads(as_json.stdout)["routes"]
    assert {(r["audience"], r["destination"]) for r in routes} >= {("cio_cart_1h", "wh")}
