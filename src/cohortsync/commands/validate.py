"""`cohortsync validate`: a test cohort through the real ingest path, checked downstream."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from cohortsync.commands.shared import JsonOption, ProjectOption, app, console, print_json
from cohortsync.engine import Cleanup, Engine, ValidateOptions, ValidationReport
from cohortsync.errors import InputError

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h)?$")
_SECONDS = {"s": 1, "m": 60, "h": 3600}


def parse_timeout(text: str) -> float:
    """`--timeout` as seconds: `60s`, `2m`, `90` (seconds)."""
    found = _DURATION.match(text.strip())
    if not found or float(found.group(1)) <= 0:
        raise InputError(f"--timeout {text!r} is not a duration — write e.g. 60s or 2m")
    return float(found.group(1)) * _SECONDS[found.group(2) or "s"]


@app.command()
def validate(
    project: ProjectOption = None,
    cohort: Annotated[
        Path | None,
        typer.Option(help="A JSON Lines cohort: per line email, events, expected audiences."),
    ] = None,
    generate: Annotated[
        int | None,
        typer.Option(help="Generate N test profiles spread over the audiences (needs --domain)."),
    ] = None,
    domain: Annotated[
        str | None, typer.Option(help="Mail domain of generated profiles: test+N@DOMAIN.")
    ] = None,
    timeout: Annotated[
        str, typer.Option(help="How long each step may take downstream: 60s, 2m.")
    ] = "60s",
    url: Annotated[
        str | None,
        typer.Option(
            help="Send the events to this running `cohortsync serve` (POST /v1/batch with the "
            "project's write key) instead of ingesting them here; its store must be one this "
            "command can open too (Postgres).",
            show_default=False,
        ),
    ] = None,
    cleanup: Annotated[
        bool,
        typer.Option("--cleanup", help="Remove the test profiles, from every destination too."),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Send a test cohort through ingest; check it enters its audiences and every destination
    acknowledges it, then buys, leaves retargeting and enters suppression. Exit 1 on a failure."""
    if cleanup:
        if cohort or generate is not None:
            raise InputError("--cleanup takes no cohort — run it alone to remove test profiles")
        with Engine.open(project) as engine:
            done = engine.cleanup_test_profiles()
        _show_cleanup(done, as_json)
        if not done.done:
            raise typer.Exit(1)
        return
    if cohort is not None and generate is not None:
        raise InputError("--cohort and --generate exclude each other — pass one")
    options = ValidateOptions(cohort, generate, domain, parse_timeout(timeout), url)
    with Engine.open(project) as engine:
        report = engine.validate(options)
    if as_json:
        print_json(_report_json(report))
    else:
        console.print(_table(report))
        _summary(report)
    if not report.passed:
        raise typer.Exit(1)


def _report_json(report: ValidationReport) -> dict[str, Any]:
    return {
        "passed": report.passed,
        "profiles": report.profiles,
        "seconds": report.seconds,
        "error": report.error,
        "rows": [dataclasses.asdict(r) for r in report.rows],
    }


WIDE = 150
"""Below this many columns, rows are grouped under a heading per profile and step."""


def _table(report: ValidationReport) -> Table:
    """One row per profile × audience × destination; grouped under each profile and step when
    the terminal is narrow."""
    grouped = console.width < WIDE
    table = Table(title=f"test cohort: {report.profiles} profiles", title_justify="left")
    if not grouped:
        table.add_column("profile", no_wrap=True)
        table.add_column("step")
    table.add_column("audience", no_wrap=True, overflow="ellipsis")
    table.add_column("destination", no_wrap=True, overflow="ellipsis")
    for column in ("expected", "seen", "acknowledged"):
        table.add_column(column)
    table.add_column("latency", justify="right")
    table.add_column("result")
    heading = None
    for r in report.rows:
        if grouped and (r.profile, r.step) != heading:
            heading = (r.profile, r.step)
            table.add_row(f"[bold]{escape(r.profile)}[/] · {r.step}", end_section=False)
        cells = [escape(r.audience), escape(r.destination or "—"), r.expected, r.seen or "—"]
        cells += [escape(r.acknowledged or "—")]
        cells += ["—" if r.latency_s is None else f"{r.latency_s:.1f}s", _verdict(r.ok, r.detail)]
        table.add_row(*([] if grouped else [escape(r.profile), r.step]), *cells)
    return table


def _verdict(ok: bool | None, detail: str) -> str:
    result = {True: "[green]ok[/]", False: "[red]FAIL[/]", None: "[yellow]not tested[/]"}[ok]
    return result + (f" {escape(detail)}" if detail else "")


def _summary(report: ValidationReport) -> None:
    failed = sum(1 for r in report.rows if r.ok is False)
    checked = sum(1 for r in report.rows if r.ok is not None)
    if report.error:
        console.print(f"[red]error:[/] {escape(report.error)}")
    elif failed:
        console.print(f"[red]{failed} of {checked} checks failed[/]")
    else:
        console.print(f"[green]all {checked} checks passed[/]")
    steps = ", ".join(f"{step} {seconds:.1f} s" for step, seconds in report.seconds.items())
    if steps:
        console.print(f"time per step (compute and sync, then check): {steps}")
    console.print("remove the test profiles with `cohortsync validate --cleanup`")


def _show_cleanup(done: Cleanup, as_json: bool) -> None:
    value = {
        "profiles": done.profiles,
        "removed": done.removed,
        "removes_queued": done.removes_queued,
        "still_held": done.still_held,
        "done": done.done,
    }
    if as_json:
        print_json(value)
        return
    if not done.profiles:
        console.print("no test profiles to remove")
        return
    console.print(
        f"{done.profiles} test profiles: {done.removes_queued} memberships ended, removes sent "
        "to every destination that held them"
    )
    for table, count in sorted(done.removed.items()):
        console.print(f"  {table}: {count:,} rows deleted")
    for destination, count in sorted(done.still_held.items()):
        console.print(
            f"[red]{destination} still holds {count} test memberships[/] — run "
            "`cohortsync sync`, then `cohortsync validate --cleanup` again"
        )
