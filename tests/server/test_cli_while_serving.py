"""While `cohortsync serve` holds the DuckDB store, the CLI's read commands go through its admin
API and print exactly what they print with the store free; `sync --retry-dead` queues dead
letters again through it; a server killed with SIGKILL leaves a file the CLI sees through.

The project is the demo shop as of a day long past, so no window of any segment is still
open: once a first `serve` has run its scheduled refreshes and delivered, nothing changes on
its own, and every output taken with the store free, through the server, and after it stopped
must be the same bytes.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from typer.testing import CliRunner

from cohortsync.cli import app
from cohortsync.cli_errors import describe
from cohortsync.config.scaffold import scaffold_project
from cohortsync.server.serve_file import (
    SERVE_FILE,
    ServeInfo,
    read_serve_file,
    write_serve_file,
)
from tests.conftest import free_port
from tests.fakes.webhook import WebhookFake
from tests.server.serve_process import COHORTSYNC, Served, serving

PAST = "2025-01-01T00:00:00Z"
HOOK = "hook"


@dataclass(frozen=True)
class Shop:
    """The demo project on disk, with a webhook destination that refused its first sync."""

    folder: Path
    hook: WebhookFake
    email: str


def cli(folder: Path, *args: str) -> tuple[int, str, str]:
    """Run a command in this process: exit code, stdout, stderr (with the line `main()` prints
    for an error)."""
    result = CliRunner().invoke(app, [*args, "--project", str(folder)], catch_exceptions=True)
    failed = result.exception
    if failed is not None and not isinstance(failed, SystemExit):
        failure = describe(failed)
        assert failure is not None
        return failure.exit_code, result.stdout, result.stderr + failure.message
    return result.exit_code, result.stdout, result.stderr


def script(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed `cohortsync` script, as a user's shell would."""
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    env.pop("COHORTSYNC_PROJECT", None)
    return subprocess.run(
        [str(COHORTSYNC), *args, "--project", str(folder)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _with_hook(folder: Path, hook: WebhookFake) -> None:
    """Add a webhook destination to the example project, fed by one audience."""
    path = folder / "cohortsync.yml"
    text = path.read_text(encoding="utf-8")
    text = text.replace(
        "destinations:\n  warehouse:",
        f"destinations:\n  {HOOK}:\n    type: webhook\n    url: {hook.url}\n"
        f"    secret: {hook.secret}\n  warehouse:",
        1,
    )
    marker = "  cio_ltv_high:\n    segment: ltv_high\n    refresh: 1d\n"
    marker += "    identifiers: [email, phone]\n    destinations: [warehouse]"
    assert marker in text
    text = text.replace(marker, marker.replace("[warehouse]", f"[warehouse, {HOOK}]"))
    path.write_text(text, encoding="utf-8")


def _token(folder: Path) -> str:
    found = read_serve_file(folder)
    assert found is not None
    return found.token


def _settled(served: Served, folder: Path) -> bool:
    """Every scheduled audience refreshed once and nothing left to deliver or retry."""
    status = httpx.get(
        f"{served.url}/api/v1/status",
        headers={"Authorization": f"Bearer {_token(folder)}"},
        timeout=60,
    ).json()
    refreshed = all(
        s["last_run_us"] is not None for s in status["schedules"] if s["refresh"] != "realtime"
    )
    idle = all(r["pending"] == 0 and r["retrying"] == 0 for r in status["routes"])
    return refreshed and idle


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    """The demo shop synced once while its webhook refused everything (dead letters), then
    served once until its first refreshes and deliveries were done."""
    folder = tmp_path_factory.mktemp("shop")
    scaffold_project(folder)
    with WebhookFake().serving() as hook:
        _with_hook(folder, hook)
        hook.fail(400, times=1_000_000)
        code, out, err = cli(folder, "demo", "--profiles", "300", "--at", PAST)
        assert code == 0, err
        hook.faults.clear()
        code, out, _ = cli(folder, "members", "cio_ltv_high", "--format", "json")
        email = orjson.loads(out)[0]["email"]
        log = tmp_path_factory.mktemp("log") / "serve.log"
        # the first start evaluates every profile for real time before it listens
        with serving(folder, log, start_within=300) as served:
            deadline = time.monotonic() + 180
            while not _settled(served, folder):
                assert time.monotonic() < deadline, "serve never finished its first work"
                time.sleep(0.2)
        yield Shop(folder, hook, email)


def read_commands(shop: Shop) -> list[tuple[str, ...]]:
    """Every command that reads through a running server, as tables and as JSON."""
    who = f"email:{shop.email}"
    period = ("--since", "2024-01-01T00:00:00Z", "--until", PAST)
    return [
        ("stats",),
        ("stats", "--json"),
        ("status",),
        ("status", "--wide"),
        ("status", "--json"),
        ("members", "cio_ltv_high"),
        ("members", "cio_ltv_high", "--format", "json"),
        ("members", "cio_ltv_high", "--format", "csv"),
        ("members", "ltv_high", "--at", "2024-12-01T00:00:00Z"),
        ("preview", "cio_lapsed_75d"),
        ("preview", "cio_lapsed_75d", "--json"),
        ("profile", who),
        ("profile", who, "--json"),
        ("explain", who, "--at", PAST),
        ("explain", who, "cio_ltv_high", "--at", PAST, "--json"),
        ("report", *period),
        ("report", *period, "--format", "json"),
        ("catalog",),
        ("catalog", "--format", "json"),
        ("members", "cio_no_such_audience"),
        ("profile", "email:nobody@example.com"),
        ("explain", who, "cio_no_such_audience"),
    ]


def outputs(shop: Shop) -> dict[tuple[str, ...], tuple[int, str, str]]:
    """Each read command's exit code, stdout and stderr (the catalog's generation instant, the
    one figure that is the time of the call, blanked)."""
    found = {}
    for command in read_commands(shop):
        code, out, err = cli(shop.folder, *command)
        if command[0] == "catalog":
            out = "\n".join(
                "generated" if "enerated" in line else line for line in out.splitlines()
            )
        found[command] = (code, out, err)
    return found


def test_read_commands_print_the_same_bytes_through_a_running_serve(
    shop: Shop, tmp_path: Path
) -> None:
    free = outputs(shop)
    assert not (shop.folder / SERVE_FILE).exists()
    with serving(shop.folder, tmp_path / "serve.log", start_within=120) as served:
        info = read_serve_file(shop.folder)
        assert info is not None and info.pid == served.process.pid
        assert info.url == served.url
        assert info.store == str(shop.folder / ".cohortsync" / "store.duckdb")
        assert stat.S_IMODE((shop.folder / SERVE_FILE).stat().st_mode) == 0o600
        through = outputs(shop)
    assert not (shop.folder / SERVE_FILE).exists()  # removed at shutdown
    after = outputs(shop)
    for command in read_commands(shop):
        assert through[command] == after[command], command
        assert free[command] == through[command], command
    assert through[("stats",)][0] == 0
    code, _, err = through[("members", "cio_no_such_audience")]
    assert code == 1 and "no segment or audience is named 'cio_no_such_audience'" in err


def _hook_status(shop: Shop) -> dict[str, Any]:
    code, out, err = cli(shop.folder, "status", "--json")
    assert code == 0, err
    rows = [r for r in orjson.loads(out)["routes"] if r["destination"] == HOOK]
    assert len(rows) == 1
    row: dict[str, Any] = rows[0]
    return row


def test_sync_retry_dead_through_serve_queues_the_dead_letters_again(
    shop: Shop, tmp_path: Path
) -> None:
    dead = _hook_status(shop)["dead_lettered"]
    assert dead > 0 and not shop.hook.applied
    with serving(shop.folder, tmp_path / "serve.log", start_within=120):
        code, out, err = cli(shop.folder, "sync", "--retry-dead", "--destination", HOOK, "--json")
        assert code == 0, err
        assert f"{dead:,} dead-lettered records queued again" in err
        assert orjson.loads(out)["routes"] is not None
        # the server's own delivery or this sync delivered them: either way, once
        code, out, err = cli(shop.folder, "sync", "--destination", HOOK, "--json")
        assert code == 0, err
        row = _hook_status(shop)
    assert (row["dead_lettered"], row["pending"], row["acknowledged"]) == (0, 0, dead)
    assert len(shop.hook.applied) > 0


def test_a_killed_server_leaves_a_file_the_cli_sees_through(shop: Shop, tmp_path: Path) -> None:
    free = script(shop.folder, "stats", "--json")
    assert free.returncode == 0, free.stderr
    with serving(shop.folder, tmp_path / "serve.log", start_within=120) as served:
        served.process.kill()
        served.process.wait()
    assert (shop.folder / SERVE_FILE).exists()  # SIGKILL: nobody removed it
    stale = script(shop.folder, "stats", "--json")
    assert (stale.returncode, stale.stdout) == (0, free.stdout)  # the store is free again


@pytest.fixture
def held_store(shop: Shop) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the store's file (as a serve that wrote no file would)."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time; held = duckdb.connect(sys.argv[1]); "
            "print('held', flush=True); time.sleep(600)",
            str(shop.folder / ".cohortsync" / "store.duckdb"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()


def test_a_stale_file_leaves_the_store_in_use_error(
    shop: Shop, held_store: subprocess.Popen[str]
) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    store = str(shop.folder / ".cohortsync" / "store.duckdb")
    write_serve_file(shop.folder, ServeInfo("http://127.0.0.1:9", gone.pid, store, "t" * 20))
    found = script(shop.folder, "stats")
    assert found.returncode == 1
    assert found.stderr.count("\n") == 1 and "Traceback" not in found.stderr
    assert "is in use by another process" in found.stderr
    (shop.folder / SERVE_FILE).unlink()


def test_a_server_that_does_not_answer_is_one_clear_line(
    shop: Shop, held_store: subprocess.Popen[str]
) -> None:
    store = str(shop.folder / ".cohortsync" / "store.duckdb")
    url = f"http://127.0.0.1:{free_port()}"
    write_serve_file(shop.folder, ServeInfo(url, held_store.pid, store, "t" * 20))
    try:
        found = script(shop.folder, "stats")
    finally:
        (shop.folder / SERVE_FILE).unlink()
    assert found.returncode == 1
    assert found.stderr.count("\n") == 1 and "Traceback" not in found.stderr
    assert "did not answer" in found.stderr and url in found.stderr
