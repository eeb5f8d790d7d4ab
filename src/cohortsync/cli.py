"""The `cohortsync` command: each command parses options, calls the engine, prints."""

from __future__ import annotations

import csv
import dataclasses
import os
import sys
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console, Group, RenderableType
from rich.markup import escape

import cohortsync.commands.explain  # the imports register the commands
import cohortsync.commands.lint
import cohortsync.commands.lock
import cohortsync.commands.report
import cohortsync.commands.spend
import cohortsync.commands.validate  # noqa: F401
from cohortsync.cli_errors import describe
from cohortsync.commands.reconcile import run_reconcile
from cohortsync.commands.shared import (
    AtOption,
    JsonOption,
    ProjectOption,
    app,
    console,
    err,
    parse_at,
    print_json,
    progress_bar,
    show,
)
from cohortsync.config.loader import PROJECT_FILE, find_project_dir
from cohortsync.config.scaffold import scaffold_project
from cohortsync.engine import (
    Engine,
    bus_gateway,
    file_size,
    memberships_json,
    platform_identifier,
)
from cohortsync.errors import InputError
from cohortsync.render import (
    compute_table,
    demo_table,
    drift_table,
    ingest_table,
    member_rows,
    members_table,
    overlap_table,
    preview_group,
    profile_group,
    schedule_table,
    stats_tables,
    status_table,
    sync_table,
)
from cohortsync.server.admin_client import engine_or_server
from cohortsync.server.limits import ServeLimits
from cohortsync.server.serve_file import SERVE_FILE

DEMO_HISTORY_WEEKS = 4
"""The demo computes its audiences weekly for this many weeks before now, so entries have
conversion windows behind them and the report has something to measure."""


class Format(StrEnum):
    """Output formats of `cohortsync members`."""

    table = "table"
    json = "json"
    csv = "csv"


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Folder for the new project.")] = Path("."),
    force: Annotated[bool, typer.Option(help="Overwrite an existing cohortsync.yml.")] = False,
) -> None:
    """Create a starter project (cohortsync.yml) in DIRECTORY."""
    target = scaffold_project(directory, force=force)
    console.print(f"created {target}: send events with its write key, or run `cohortsync demo`")


@app.command()
def demo(
    project: ProjectOption = None,
    profiles: Annotated[int, typer.Option(min=1, help="How many shoppers to simulate.")] = 20_000,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same shop.")] = 7,
    at: AtOption = None,
) -> None:
    """Build a synthetic D2C shop's 180 days of events up to --at (default now), compute its
    audiences weekly over the last four weeks up to that instant, sync them, and write the
    holdout report."""
    now = parse_at(at) or datetime.now(UTC)
    if now > datetime.now(UTC):
        raise InputError(
            f"--at {at} is in the future: the demo shop's events end at an instant "
            "that has passed (leave --at out for now)"
        )
    directory = find_project_dir(project)
    if not (directory / PROJECT_FILE).exists():
        scaffold_project(directory)
        console.print(f"created {directory / PROJECT_FILE}")
    with Engine.open(directory) as engine, progress_bar() as bar:
        task = bar.add_task("generating and ingesting the demo shop", total=None)
        result = engine.load_demo(profiles, seed, now, lambda n: bar.advance(task, n))
        bar.update(task, total=result.received)
        stats = engine.stats()
        for weeks_ago in range(DEMO_HISTORY_WEEKS, 0, -1):  # as a weekly refresh would have
            engine.compute(now - timedelta(weeks=weeks_ago))
        report = engine.compute(now)
        overlaps = engine.overlaps()
        sync_task = bar.add_task("syncing to destinations", total=None)
        synced = engine.sync(progress=lambda n: bar.advance(sync_task, n))
        status = engine.sync_status()
        dry = {n for n, c in engine.sync_setup.configs.items() if c.dry_run}
        locked = engine.lock()
        written = engine.write_catalog(directory / ".cohortsync")
        held = engine.report(now - timedelta(weeks=DEMO_HISTORY_WEEKS), now)
        report_file = directory / ".cohortsync" / "report.html"
        report_file.write_text(engine.report_html(held), encoding="utf-8")
    console.print(ingest_table([("demo shop", result)]))
    console.print(stats_tables(stats))
    console.print(compute_table(report))
    if overlaps:
        console.print(overlap_table(overlaps))
    console.print(demo_table(report, status, dry, synced.delivery))
    if synced.dry_run_folder is not None:
        console.print(f"dry-run requests (nothing sent): {synced.dry_run_folder}")
    console.print(f"audience names locked in {locked.path} (commit it with cohortsync.yml)")
    console.print(f"audience catalog: {', '.join(str(p) for p in written)}")
    console.print(f"holdout report (lift, discounts, latency): {report_file}")
    console.print(
        "dashboard: run `cohortsync serve` here, then open http://127.0.0.1:8000/ui "
        f"(log in with the token in {directory / SERVE_FILE})"
    )


@app.command()
def ingest(
    files: Annotated[list[Path], typer.Argument(help="JSONL, CSV or Parquet files.")],
    project: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Ingest Segment messages from files; bad rows are quarantined; re-ingesting is a no-op."""
    _check_files(files)
    rows = []
    with Engine.open(project) as engine, progress_bar() as bar:
        for path in files:
            task = bar.add_task(path.name, total=file_size(path))
            report = engine.ingest_file(path, partial(bar.advance, task))
            rows.append((str(path), report.result))
    show({name: r.counts() for name, r in rows}, as_json, lambda: ingest_table(rows))


def _check_files(files: list[Path]) -> None:
    """Every file is there before any is read, so a typo ingests nothing."""
    for path in files:
        if path.is_dir():
            raise InputError(f"{path} is a folder: name its files, e.g. {path}/*.jsonl")
        if not path.exists():
            raise InputError(f"{path}: no such file — check the path (nothing was ingested)")


@app.command()
def profile(
    identifier: Annotated[
        str, typer.Argument(help="email:a@b.com, phone:+1…, user_id:u1, anonymous_id:x or an id.")
    ],
    project: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show one profile: identifiers, traits, merges, recent events and current audiences."""
    with engine_or_server(project) as engine:
        view = engine.find_profile(identifier)
        held = engine.profile_memberships(view.profile_id)
    value = {**dataclasses.asdict(view), "memberships": memberships_json(held)}
    show(value, as_json, lambda: profile_group(view, held))


@app.command()
def stats(project: ProjectOption = None, as_json: JsonOption = False) -> None:
    """Counts: events by type, profiles, identifiers by kind, quarantined rows by reason."""
    with engine_or_server(project) as engine:
        counts = engine.stats()
    show(counts, as_json, lambda: stats_tables(counts))


@app.command()
def compute(
    project: ProjectOption = None,
    at: AtOption = None,
    record_future: Annotated[
        bool,
        typer.Option(
            "--record-future",
            help="Record a compute --at an instant still to come (else it is only evaluated); "
            "computes before it are then evaluated, not recorded, until the clock reaches it.",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Compute every segment and audience as of --at (default now) and record who entered/left.

    An --at before the recorded history, or in the future, is evaluated and not recorded.
    """
    moment = parse_at(at)
    with Engine.open(project) as engine:
        report = engine.compute(moment, record_future=record_future)
    show(dataclasses.asdict(report), as_json, lambda: compute_table(report))


@app.command()
def members(
    name: Annotated[str, typer.Argument(help="A segment or audience name.")],
    project: ProjectOption = None,
    at: AtOption = None,
    output: Annotated[
        Format, typer.Option("--format", "-f", help="table, json or csv (csv has a header).")
    ] = Format.table,
) -> None:
    """List the members of a segment or audience: now, or as of --at from the recorded history."""
    moment = parse_at(at)
    with engine_or_server(project) as engine:
        found = engine.members(name, moment)
    if output is Format.json:
        print_json([dataclasses.asdict(m) for m in found])
    elif output is Format.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerows(member_rows(found))
    else:
        when = f"as of {moment.isoformat()}" if moment else "now"
        console.print(members_table(found, f"{name}: {len(found):,} members {when}"))


@app.command()
def preview(
    name: Annotated[str, typer.Argument(help="A segment or audience name.")],
    project: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Compute one segment or audience now (nothing recorded): size, sample, overlaps, rules."""
    with engine_or_server(project) as engine:
        shown = engine.preview(name)
    show(dataclasses.asdict(shown), as_json, lambda: preview_group(shown))


class Role(StrEnum):
    """What one `cohortsync serve` process does."""

    all = "all"
    ingest = "ingest"
    worker = "worker"


@app.command()
def serve(
    project: ProjectOption = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8000,
    role: Annotated[
        Role,
        typer.Option(
            help="all: ingest, real-time evaluation and delivery in this process. ingest: the "
            "API only, publishing to --bus. worker: consume --bus, store, evaluate, deliver."
        ),
    ] = Role.all,
    bus: Annotated[
        str | None,
        typer.Option(
            envvar="COHORTSYNC_BUS",
            help="Event bus between ingest and worker: redis://127.0.0.1:6379/0 or "
            "nats://127.0.0.1:4222.",
            show_default=False,
        ),
    ] = None,
    bus_stream: Annotated[
        str,
        typer.Option(
            envvar="COHORTSYNC_BUS_STREAM",
            help="Name prefix of the bus's streams (one per partition) and consumer group.",
        ),
    ] = "cohortsync-events",
    name: Annotated[
        str | None,
        typer.Option(
            envvar="COHORTSYNC_WORKER_NAME",
            help="The worker's name in the bus's consumer group (--role worker). Default: one "
            "name per DuckDB store; with a Postgres store, several workers run at once, each "
            "named after its host and process.",
            show_default=False,
        ),
    ] = None,
    trusted_proxies: Annotated[
        str,
        typer.Option(
            help="Comma-separated CIDRs of reverse proxies (10.0.0.0/8,127.0.0.1) whose "
            "X-Forwarded-For names the client for context.ip; by default no header is believed.",
        ),
    ] = "",
    max_connections: Annotated[
        int,
        typer.Option(
            min=1,
            help="Open connections at most; one more closes the one idle longest (or is refused "
            "when all are busy).",
        ),
    ] = ServeLimits.max_connections,
    header_timeout: Annotated[
        float,
        typer.Option(
            min=0.1, help="Seconds a connection may take to send complete request headers."
        ),
    ] = ServeLimits.header_timeout,
    body_timeout: Annotated[
        float,
        typer.Option(min=0.1, help="Seconds a request may take to send its whole body (408)."),
    ] = ServeLimits.body_timeout,
) -> None:
    """Run the Segment-compatible ingest API (POST /v1/track, /v1/batch, …) and, beside it,
    real-time evaluation, scheduled refreshes and delivery."""
    from cohortsync.server.app import create_app
    from cohortsync.server.client_ip import parse_trusted_proxies
    from cohortsync.server.serve_file import (
        ServeInfo,
        announced,
        client_url,
        new_token,
        remove_serve_file,
        write_serve_file,
    )

    try:
        proxies = parse_trusted_proxies(trusted_proxies)
    except ValueError as exc:
        raise InputError(str(exc)) from None

    from cohortsync.server.limits import run_server

    limits = ServeLimits(max_connections, header_timeout, body_timeout)
    if role is not Role.all and not bus:
        raise InputError(
            f"--role {role.value} needs --bus URL: redis://127.0.0.1:6379/0 or "
            "nats://127.0.0.1:4222 (or set COHORTSYNC_BUS)"
        )
    if role is Role.ingest:
        gateway = bus_gateway(project, str(bus), bus_stream)
        console.print(f"cohortsync ingest on http://{host}:{port}, publishing to the bus")
        run_server(
            create_app(gateway, trusted_proxies=proxies, body_timeout=body_timeout),
            host,
            port,
            limits,
        )
        return
    if role is Role.worker:
        _work(project, str(bus), bus_stream, name)
        return
    with Engine.open(project) as engine:
        engine.check_lock()
        console.print(
            f"cohortsync listening on http://{host}:{port} (store {engine.store_shown()})"
        )
        here = ServeInfo(
            client_url(host, port), os.getpid(), engine.loaded.store_location(), new_token()
        )
        root = engine.loaded.root
        console.print(
            f"dashboard: {here.url}/ui (log in with an admin token, or this run's token in "
            f"{root / SERVE_FILE})"
        )
        with announced(root, here):
            run_server(
                create_app(
                    engine,
                    trusted_proxies=proxies,
                    body_timeout=body_timeout,
                    serve_token=here.token,
                ),
                host,
                port,
                limits,
                on_listening=lambda: write_serve_file(root, here),
                on_stopping=lambda: remove_serve_file(root, here.pid),
            )


def _work(project: Path | None, bus_url: str, stream: str, name: str | None) -> None:
    """The worker role: consume the bus until SIGINT or SIGTERM."""
    import signal
    import threading

    done = threading.Event()
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_: done.set())
    with Engine.open(project) as engine:
        member = engine.join_bus(bus_url, stream, name)
        member.start()
        console.print(
            f"cohortsync worker {member.name} consuming the bus (store {engine.store_shown()})"
        )
        done.wait()
        member.stop()


@app.command()
def sync(
    project: ProjectOption = None,
    audience: Annotated[
        str | None, typer.Option(help="Only this audience (conversions are skipped).")
    ] = None,
    destination: Annotated[str | None, typer.Option(help="Only this destination.")] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Write the exact requests (identifiers hashed, secrets hidden) to the dry-run "
            "folder; send nothing.",
        ),
    ] = False,
    retry_dead: Annotated[
        bool, typer.Option("--retry-dead", help="Queue dead-lettered records again first.")
    ] = False,
    reconcile: Annotated[
        bool,
        typer.Option(
            "--reconcile",
            help="Compare each ad platform's list with the members cohortsync holds there and, "
            "past sync.reconcile_threshold, rebuild it (with --dry-run: only report).",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Deliver audience changes and conversions to destinations: each once, in order, retried."""
    if reconcile:
        if retry_dead:
            raise InputError("--retry-dead and --reconcile do not go together: run them apart")
        run_reconcile(project, audience, destination, dry_run, as_json)
        return
    with engine_or_server(project) as engine:
        if retry_dead:
            requeued = engine.retry_dead(audience, destination)
            err.print(f"{requeued:,} dead-lettered records queued again")
        with progress_bar() as bar:
            task = bar.add_task("delivering", total=None)
            report = engine.sync(
                audience, destination, dry_run, progress=lambda n: bar.advance(task, n)
            )
    if report.dry_run_folder is not None:
        err.print(f"dry-run requests written under {report.dry_run_folder}")
    show(_sync_json(report), as_json, lambda: sync_table(report))


def _sync_json(report: Any) -> dict[str, Any]:
    return {
        "started_at": report.started_at,
        "duration_ms": report.duration_ms,
        "planned": dataclasses.asdict(report.planned),
        "dry_run_folder": report.dry_run_folder,
        "routes": [
            {"destination": d, "audience": a, **dataclasses.asdict(t)}
            for (d, a), t in report.delivery.tallies.items()
        ],
    }


@app.command()
def status(
    project: ProjectOption = None,
    wide: Annotated[
        bool,
        typer.Option("--wide", help="Full names, one line per route, however wide the lines."),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Per audience × destination: desired, acknowledged, pending, failed, dead letters, matches;
    and each audience's refresh with its last and next run."""
    with engine_or_server(project) as engine:
        rows = engine.sync_status()
        drift = engine.drift(status=rows)
        runs = engine.sync_runs(5)
        schedules = engine.schedules()
    value = {
        "routes": [{**dataclasses.asdict(r), "match_rate": r.match_rate} for r in rows],
        "runs": [dataclasses.asdict(r) for r in runs],
        "schedules": [dataclasses.asdict(s) for s in schedules],
        "drift": [dataclasses.asdict(d) for d in drift],
    }
    picture = Group(status_table(rows, wide), drift_table(drift), schedule_table(schedules, wide))
    if as_json:
        print_json(value)
    elif wide:
        _print_unwrapped(picture)
    else:
        console.print(picture)


def _print_unwrapped(picture: RenderableType) -> None:
    """Print at the picture's natural width, wider than the terminal if it must be."""
    natural = console.measure(picture, options=console.options.update_width(10_000)).maximum
    Console(width=max(console.width, natural)).print(picture)


class Platform(StrEnum):
    """Ad platforms whose normalisation rules `cohortsync normalize` applies."""

    meta = "meta"
    google = "google"
    tiktok = "tiktok"


@app.command()
def normalize(
    kind: Annotated[str, typer.Argument(help="email, phone, first_name, zip, country, …")],
    value: Annotated[str, typer.Argument(help="The raw value, as your data holds it.")],
    platform: Annotated[
        Platform, typer.Option("--for", help="Whose rules: meta, google or tiktok.")
    ] = Platform.meta,
    region: Annotated[
        str, typer.Option(help="Country for phones written without a country code.")
    ] = "US",
    as_json: JsonOption = False,
) -> None:
    """Print an identifier as a platform receives it: normalised, then SHA-256 (match debugging)."""
    normal, hashed = platform_identifier(kind, value, platform.value, region)
    result = {"kind": kind, "platform": platform.value, "normalized": normal, "sha256": hashed}
    if as_json:
        print_json(result)
    else:
        console.print(f"normalized  {escape(normal)}\nsha256      {hashed}")


def main() -> None:
    """Entry point: run the CLI; a failure prints one line (`error: what is wrong — what to
    do`, `file:line:` first for the project file) and exits non-zero, never a traceback."""
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        raise SystemExit(130) from None
    except BrokenPipeError:
        # the reader of stdout has gone (`cohortsync members x | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None
    except Exception as exc:
        failure = describe(exc)
        if failure is None:
            raise
        if failure.message:
            err.print(f"[red]error:[/] {escape(failure.message)}", highlight=False, soft_wrap=True)
        raise SystemExit(failure.exit_code) from None
    if isinstance(code, int) and code != 0:  # `typer.Exit(code)`, 130 after Ctrl-C
        raise SystemExit(code)
