"""`cohortsync lint`: the classic mistakes with their codes, measured figures and fixes."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.console import Group, RenderableType
from rich.markup import escape
from rich.text import Text

from cohortsync.commands.shared import ProjectOption, app, console, print_json
from cohortsync.engine import Engine, LintReport


class LintFormat(StrEnum):
    """How `lint` prints its findings."""

    text = "text"
    json = "json"


@app.command()
def lint(
    project: ProjectOption = None,
    output: Annotated[
        LintFormat, typer.Option("--format", "-f", help="text (a table) or json.")
    ] = LintFormat.text,
) -> None:
    """Check the project for the classic mistakes: each finding has a stable code, the
    measured figure and the fix. Exits 1 when an error remains."""
    with Engine.open(project) as engine:
        report = engine.lint()
    if output is LintFormat.json:
        print_json(lint_json(report))
    else:
        console.print(lint_picture(report))
    if report.errors:
        raise typer.Exit(1)


def lint_json(report: LintReport) -> dict[str, Any]:
    """The report as `lint --format json` prints it."""
    return {
        "findings": [
            {
                "code": r.finding.code,
                "severity": r.severity,
                "audience": r.finding.audience,
                "destination": r.finding.destination,
                "message": r.finding.message,
                "fix": r.finding.fix,
                "figure": r.finding.figure,
            }
            for r in report.findings
        ],
        "errors": report.errors,
        "warnings": report.warnings,
        "measured": report.measured,
        "as_of": report.as_of.isoformat() if report.as_of else None,
        "notes": report.notes,
    }


def lint_picture(report: LintReport) -> RenderableType:
    """One block per finding (severity, code, audience; what is wrong; the fix), the notes,
    and a summary line."""
    parts: list[RenderableType] = []
    for r in report.findings:
        colour = "red" if r.severity == "error" else "yellow"
        where = r.finding.audience or r.finding.destination or ""
        parts.append(
            Text.from_markup(
                f"[{colour}]{r.severity}[/] [bold]{r.finding.code}[/] {escape(where)}\n"
                f"  {escape(r.finding.message)}\n  [green]fix:[/] {escape(r.finding.fix)}"
            )
        )
    parts.extend(Text(f"note: {note}") for note in report.notes)
    measured = f", memberships as of {report.as_of:%Y-%m-%d %H:%M}" if report.as_of else ""
    parts.append(Text(f"{report.errors} error(s), {report.warnings} warning(s){measured}"))
    return Group(*parts)
