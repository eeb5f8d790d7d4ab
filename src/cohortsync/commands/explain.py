"""`cohortsync explain`: why one profile is in or out of each audience, as Rich trees and
tables or JSON."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from cohortsync.commands.shared import (
    AtOption,
    JsonOption,
    ProjectOption,
    app,
    parse_at,
    show,
)
from cohortsync.engine import ProfileWhy, explanation_json
from cohortsync.server.admin_client import engine_or_server

_STATUS = {"in": "[green]IN[/]", "held_out": "[yellow]HELD OUT[/]", "out": "[red]OUT[/]"}


@app.command()
def explain(
    identifier: Annotated[
        str, typer.Argument(help="email:a@b.com, phone:+1…, user_id:u1, anonymous_id:x or an id.")
    ],
    audience: Annotated[
        str | None, typer.Argument(help="Only this audience (default: every audience).")
    ] = None,
    project: ProjectOption = None,
    at: AtOption = None,
    as_json: JsonOption = False,
) -> None:
    """Why a profile is in or out of each audience: every condition's truth and the events that
    decided it, exclusions, holdout, next change, and what each destination holds."""
    moment = parse_at(at)
    with engine_or_server(project) as engine:
        why = engine.explain_profile(identifier, audience, moment)
    show(explanation_json(why), as_json, lambda: explanation_picture(why))


def _mark(truth: bool) -> str:
    return "[green]✓[/]" if truth else "[red]✗[/]"


def _add_node(parent: Tree, node: dict[str, Any]) -> None:
    """One trace node (JSON form) under `parent`, with its events and children."""
    line = f"{_mark(node['truth'])} {escape(node['text'])}"
    kind = node["kind"]
    if kind == "event":
        count = node["count"]
        said = "count not known" if count is None else f"{count} matching"
        line += f"  [dim]({said}; needs {escape(str(node['compared']))})[/]"
    elif kind == "trait":
        value = "missing" if node["value"] is None else repr(node["value"])
        computed = ", computed" if node.get("computed") else ""
        line += f"  [dim]({escape(node['name'])} = {escape(value)}{computed})[/]"
    elif kind == "has":
        line += f"  [dim]({node['value']} held)[/]"
    elif kind == "segment" and node.get("repeated"):
        line += "  [dim](traced above)[/]"
    branch = parent.add(line)
    if kind == "event":
        reference = node.get("reference")
        if reference is None and node.get("since"):
            branch.add(f"[dim]no {escape(node['since'])} yet: false whatever the count[/]")
        if reference is not None:
            branch.add(
                f"[dim]since its latest {escape(reference['event'])} at "
                f"{reference['timestamp']} ({escape(reference['message_id'])})[/]"
            )
        events = node["events"]
        if node["count"] is not None and node["count"] > len(events):
            branch.add(f"[dim]the latest {len(events)} of {node['count']}:[/]")
        for e in events:
            branch.add(
                f"[cyan]{escape(e['event'])}[/] at {e['timestamp']} "
                f"[dim]({escape(e['message_id'])})[/]"
            )
    for child in node.get("children", ()):
        _add_node(branch, child)


def _downstream_table(audience: dict[str, Any]) -> Table:
    table = Table(title="downstream (now)", title_justify="left")
    for column in ("destination", "status", "detail", "last delivery"):
        table.add_column(column, overflow="fold")  # a narrow terminal folds times, never cuts
    for d in audience["downstream"]:
        last = d["last_delivery"]
        delivered = "—"
        if last is not None:
            delivered = f"{last['op']} {last['outcome'].replace('_', ' ')} at {last['at']}"
        name = d["destination"] + (" (dry run)" if d["dry_run"] else "")
        table.add_row(escape(name), escape(d["status"]), escape(d["detail"]), escape(delivered))
    return table


def explanation_picture(why: ProfileWhy) -> RenderableType:
    """A tree per audience (in/out, each node's truth, deciding events) and its downstream."""
    shown = explanation_json(why)
    head = f"[bold]profile[/] {escape(shown['profile_id'])} as of {shown['at']}"
    head += f" — {shown['events']:,} events read"
    parts: list[RenderableType] = [head]
    if shown["past"]:
        parts.append(
            "[dim]evaluated from the event log as of that instant; identify traits, "
            "identifiers, recorded membership and destinations are as they are now[/]"
        )
    for a in shown["audiences"]:
        tree = Tree(
            f"{_STATUS[a['status']]} [bold]{escape(a['audience'])}[/] — {escape(a['reason'])}"
        )
        _add_node(tree, a["trace"])
        recorded = a["recorded"]
        if recorded["member"]:
            flag = ", holdout" if recorded["holdout"] else ""
            tree.add(f"recorded: member since {recorded['since']}{flag}")
        else:
            tree.add("recorded: not a member")
        flip = a["next_change"]
        if flip is None:
            tree.add("next change: none without a new event")
        else:
            tree.add(f"next change: {escape(flip['summary'])} [dim](refresh: {a['refresh']})[/]")
        parts.append(tree)
        if a["downstream"]:
            parts.append(_downstream_table(a))
    return Group(*parts)
