"""`cohortsync lock`, `plan` and `catalog`: locked audience names, the effect of a logic change
before it is accepted, and the document the teams using the audiences read."""

from __future__ import annotations

import dataclasses
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table

from cohortsync.commands.shared import (
    JsonOption,
    ProjectOption,
    app,
    console,
    show,
    write_out,
)
from cohortsync.engine import (
    Engine,
    catalog_html,
    catalog_json,
    catalog_markdown,
)
from cohortsync.server.admin_client import engine_or_server


@app.command()
def lock(
    project: ProjectOption = None,
    accept: Annotated[
        list[str] | None,
        typer.Option(
            "--accept",
            help="Record the change of this audience (its version: raised); repeatable.",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Write cohortsync.lock (commit it): every synced audience's name, logic fingerprint,
    version, destinations and history."""
    with Engine.open(project) as engine:
        report = engine.lock(accept or [])
    show(dataclasses.asdict(report), as_json, lambda: _lock_picture(report))


def _lock_picture(report: Any) -> RenderableType:
    verb = "wrote" if report.written else "unchanged:"
    lines: list[RenderableType] = [f"{verb} {escape(report.path)}"]
    table = Table("audience", "version", "what happened", title=None, box=None)
    for name, entry in report.audiences.items():
        if name in report.accepted:
            what = f"accepted version {entry['version']}"
        elif name in report.added:
            what = "locked"
        elif name in report.retired:
            what = "retired"
        else:
            what = report.notes.get(name, "as locked")
        table.add_row(escape(name), str(entry["version"]), escape(what))
    for name, note in report.notes.items():
        if name not in report.audiences:
            table.add_row(escape(name), "", escape(note))
    lines.append(table)
    return Group(*lines)


@app.command()
def plan(project: ProjectOption = None, as_json: JsonOption = False) -> None:
    """Per audience whose logic differs from cohortsync.lock: who would enter and leave, and
    what each destination would be sent (computed now, nothing recorded)."""
    with Engine.open(project) as engine:
        found = engine.plan()
    show(dataclasses.asdict(found), as_json, lambda: _plan_picture(found))


def _plan_picture(found: Any) -> RenderableType:
    if not found.lock_found:
        return (
            "no cohortsync.lock yet: nothing is locked, so nothing to plan (run `cohortsync lock`)"
        )
    if not found.audiences:
        return "every audience matches cohortsync.lock: nothing to plan"
    parts: list[RenderableType] = []
    for a in found.audiences:
        changed = ", ".join(a.changed) or "version only"
        head = (
            f"[bold]{escape(a.audience)}[/]: {escape(changed)} changed "
            f"(version {a.version}, locked {a.locked_version}: {a.state})\n"
            f"  members {a.members_now:,} → {a.members_after:,}: {a.enters:,} enter, "
            f"{a.leaves:,} leave, {a.holdout_flips:,} change holdout"
        )
        parts.append(head)
        for label, sample in (("entering", a.enter_sample), ("leaving", a.leave_sample)):
            if sample:
                who = ", ".join(
                    escape(f"{s.profile_id} ({s.email or s.phone or 'no email or phone'})")
                    for s in sample
                )
                parts.append(f"  e.g. {label}: {who}")
        table = Table("destination", "adds", "removes", "holdout withheld", box=None)
        for r in a.destinations:
            name = r.destination + (" (dry run)" if r.dry_run else "")
            table.add_row(escape(name), f"{r.adds:,}", f"{r.removes:,}", f"{r.holdout_withheld:,}")
        parts.append(table)
        nxt = (
            f"  then: raise version: to {(a.locked_version or 0) + 1} and run "
            f"`cohortsync lock --accept {a.audience}`"
            if a.state == "changed"
            else f"  then: `cohortsync lock --accept {a.audience}`"
            if a.state == "raised"
            else "  then: `cohortsync compute`, `cohortsync sync`, `cohortsync lock`"
        )
        parts.append(escape(nxt))
    return Group(*parts)


class CatalogFormat(StrEnum):
    """Output formats of `cohortsync catalog`."""

    md = "md"
    html = "html"
    json = "json"


@app.command()
def catalog(
    project: ProjectOption = None,
    output: Annotated[
        CatalogFormat, typer.Option("--format", "-f", help="md, html (one page) or json.")
    ] = CatalogFormat.md,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Write to this file (default: print).", show_default=False
        ),
    ] = None,
) -> None:
    """The audience catalog for paid and analytics teams: locked name, owner, rules in plain
    English, cadence, exits, holdout, identifiers, offer, destinations, size, version history."""
    with engine_or_server(project) as engine:
        found = engine.catalog()
    text = {
        CatalogFormat.md: catalog_markdown,
        CatalogFormat.html: catalog_html,
        CatalogFormat.json: catalog_json,
    }[output](found)
    if out is None:
        print_text(text)
        return
    write_out(out, text, f"catalog.{output}")
    console.print(f"wrote {escape(str(out))} ({len(found.audiences)} audiences)")


def print_text(text: str) -> None:
    """Print a document as is (no Rich markup, no wrapping)."""
    sys.stdout.write(text)
