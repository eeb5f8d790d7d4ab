"""`cohortsync report`: holdout lift per audience, with intervals, SRM and MDE."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.table import Table

from cohortsync.commands.report_tables import latency_table, spend_table
from cohortsync.commands.shared import ProjectOption, app, console, parse_at, write_out
from cohortsync.engine import SRM_ALERT, Engine, Report, audience_json, report_json, verdict
from cohortsync.errors import InputError
from cohortsync.server.admin_client import engine_or_server

__all__ = ["audience_json", "report", "report_json", "report_table", "verdict"]

DEFAULT_PERIOD = timedelta(days=30)
"""`--since` defaults to this long before `--until`."""


class ReportFormat(StrEnum):
    """How `report` prints."""

    table = "table"
    json = "json"
    html = "html"


@app.command()
def report(
    project: ProjectOption = None,
    audience: Annotated[
        str | None, typer.Option("--audience", "-a", help="Only this audience.")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option("--since", help="First entry instant counted (default: 30 days before)."),
    ] = None,
    until: Annotated[
        str | None, typer.Option("--until", help="Last entry instant counted (default: now).")
    ] = None,
    output: Annotated[
        ReportFormat,
        typer.Option(
            "--format", "-f", help="table, json, or html (one self-contained page with charts)."
        ),
    ] = ReportFormat.table,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the report to this file instead.")
    ] = None,
) -> None:
    """Holdout lift of each audience with a holdout: profiles that entered in the period,
    per arm, converted within `report.window` of entering; their discounts, the spend's cost per
    incremental conversion, and purchase → suppression latency per destination."""
    end = _instant("--until", until) or datetime.now(UTC)
    start = _instant("--since", since) or end - DEFAULT_PERIOD
    if start > end:
        raise InputError("--since is after --until — give a period that moves forward")
    with engine_or_server(project) as engine:
        found = engine.report(start, end, audience)
    if out is not None:
        write_out(out, _render(found, output), f"report.{_SUFFIX[output]}")
        console.print(f"wrote {out}")
    elif output is ReportFormat.table:
        for table in _tables(found):
            console.print(table)
    elif output is ReportFormat.html and sys.stdout.isatty():
        raise InputError("--format html writes a page: add --out report.html (or redirect > file)")
    else:
        sys.stdout.write(_render(found, output))


_SUFFIX = {ReportFormat.table: "txt", ReportFormat.json: "json", ReportFormat.html: "html"}


def _render(found: Report, output: ReportFormat) -> str:
    """The report as text in the chosen format."""
    if output is ReportFormat.json:
        return orjson.dumps(report_json(found), option=orjson.OPT_INDENT_2).decode() + "\n"
    if output is ReportFormat.html:
        return Engine.report_html(found)
    with console.capture() as captured:
        for table in _tables(found):
            console.print(table)
    return captured.get()


def _tables(found: Report) -> list[Table]:
    """Lift; discounts and spend; latency per destination."""
    tables = [report_table(found), spend_table(found)]
    if found.latency is not None:
        tables.append(latency_table(found.latency))
    return tables


def _instant(option: str, text: str | None) -> datetime | None:
    try:
        return parse_at(text)
    except InputError as exc:
        raise InputError(str(exc).replace("--at", option, 1)) from None


def _pct(value: float | None, sign: bool = False) -> str:
    return "—" if value is None else f"{value * 100:{'+' if sign else ''}.2f}%"


def _pp(value: float) -> str:
    return f"{value * 100:+.2f} pp"


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:,.1f}"


def report_table(found: Report) -> Table:
    """One row per audience; the arms, lift with its interval, checks and a verdict."""
    title = (
        f"Holdout lift: entries {found.since:%Y-%m-%d %H:%M} – {found.until:%Y-%m-%d %H:%M} UTC, "
        f"{found.conversion_event} within {found.window}"
    )
    table = Table(title=title)
    for column in (
        "audience",
        "treatment",
        "holdout",
        "lift (95% CI)",
        "relative",
        "p",
        "incremental conv.",
        "incremental revenue",
        "SRM p",
        "verdict",
    ):
        table.add_column(column)
    for one in found.audiences:
        f = one.lift
        arms = [
            f"{a.converted}/{a.profiles} ({_pct(a.converted / a.profiles if a.profiles else None)})"
            for a in (one.treatment, one.holdout)
        ]
        srm = "—" if one.srm_p_value is None else f"{one.srm_p_value:.3g}"
        if one.srm_alert:
            srm = f"[red]{srm} < {SRM_ALERT}: split mismatch[/]"
        table.add_row(
            one.audience,
            *arms,
            "—"
            if f is None
            else f"{_pct(f.lift, True)} [{_pct(f.lift_low, True)}, {_pct(f.lift_high, True)}]",
            "—"
            if f is None
            else f"{_pct(f.relative, True)} [{_pct(f.relative_low, True)}, "
            f"{_pct(f.relative_high, True)}]",
            "—" if f is None or f.p_value is None else f"{f.p_value:.3g}",
            "—"
            if f is None
            else f"{_num(f.incremental)} [{_num(f.incremental_low)}, {_num(f.incremental_high)}]",
            "—"
            if one.incremental_revenue is None
            else f"{_num(one.incremental_revenue)} "
            f"[{_num(one.incremental_revenue_low)}, {_num(one.incremental_revenue_high)}]",
            srm,
            verdict(one),
        )
    if not found.audiences:
        table.caption = "no audience with a holdout"
    return table
