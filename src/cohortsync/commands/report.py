"""`cohortsync report`: holdout lift per audience, with intervals, SRM and MDE."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.table import Table

from cohortsync.commands.shared import ProjectOption, app, console, parse_at, print_json, write_out
from cohortsync.engine import SRM_ALERT, Arm, AudienceReport, Report
from cohortsync.errors import InputError
from cohortsync.server.admin_client import engine_or_server

DEFAULT_PERIOD = timedelta(days=30)
"""`--since` defaults to this long before `--until`."""


class ReportFormat(StrEnum):
    """How `report` prints."""

    table = "table"
    json = "json"


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
        ReportFormat, typer.Option("--format", "-f", help="table or json.")
    ] = ReportFormat.table,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the report to this file instead.")
    ] = None,
) -> None:
    """Holdout lift of each audience with a holdout: profiles that entered in the period,
    per arm, converted within `report.window` of entering."""
    end = _instant("--until", until) or datetime.now(UTC)
    start = _instant("--since", since) or end - DEFAULT_PERIOD
    if start > end:
        raise InputError("--since is after --until — give a period that moves forward")
    with engine_or_server(project) as engine:
        found = engine.report(start, end, audience)
    if out is not None:
        if output is ReportFormat.json:
            text = orjson.dumps(report_json(found), option=orjson.OPT_INDENT_2).decode() + "\n"
        else:
            with console.capture() as captured:
                console.print(report_table(found))
            text = captured.get()
        write_out(out, text, "report.json" if output is ReportFormat.json else "report.txt")
        console.print(f"wrote {out}")
    elif output is ReportFormat.json:
        print_json(report_json(found))
    else:
        console.print(report_table(found))


def _instant(option: str, text: str | None) -> datetime | None:
    try:
        return parse_at(text)
    except InputError as exc:
        raise InputError(str(exc).replace("--at", option, 1)) from None


def verdict(one: AudienceReport) -> str:
    """One plain sentence on what the figures allow to say."""
    found = one.lift
    if found is None:
        return "no comparison yet: an arm has no profiles"
    if one.srm_alert:
        return "do not read: the split does not match the configured holdout (SRM)"
    mde = "" if found.mde is None else f" (MDE {found.mde * 100:.1f} pp)"
    if found.lift_low > 0:
        return f"lift: {found.lift * 100:+.1f} pp, interval above zero"
    if found.lift_high < 0:
        return f"negative lift: {found.lift * 100:+.1f} pp, interval below zero"
    return f"no detectable lift yet{mde}"


def _pair(low: float | None, high: float | None) -> list[float] | None:
    return None if low is None or high is None else [low, high]


def _arm(arm: Arm) -> dict[str, Any]:
    rate = arm.converted / arm.profiles if arm.profiles else None
    return {
        "profiles": arm.profiles,
        "converted": arm.converted,
        "conversion_rate": rate,
        "revenue": arm.revenue,
    }


def audience_json(one: AudienceReport) -> dict[str, Any]:
    """One audience as `report --format json` prints it."""
    f = one.lift
    return {
        "audience": one.audience,
        "holdout_percent": one.holdout_percent,
        "treatment": _arm(one.treatment),
        "holdout": _arm(one.holdout),
        "lift": f and f.lift,
        "lift_ci": f and [f.lift_low, f.lift_high],
        "relative_lift": f and f.relative,
        "relative_lift_ci": f and _pair(f.relative_low, f.relative_high),
        "p_value": f and f.p_value,
        "incremental_conversions": f and f.incremental,
        "incremental_conversions_ci": f and [f.incremental_low, f.incremental_high],
        "incremental_revenue": one.incremental_revenue,
        "incremental_revenue_ci": _pair(one.incremental_revenue_low, one.incremental_revenue_high),
        "srm_p_value": one.srm_p_value,
        "srm_alert": one.srm_alert,
        "mde": f and f.mde,
        "verdict": verdict(one),
    }


def report_json(found: Report) -> dict[str, Any]:
    """The report as `report --format json` prints it."""
    return {
        "since": found.since.isoformat(),
        "until": found.until.isoformat(),
        "window": found.window,
        "conversion_event": found.conversion_event,
        "value_property": found.value_property,
        "audiences": [audience_json(a) for a in found.audiences],
    }


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
