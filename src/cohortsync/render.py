"""Terminal pictures: Rich tables for stats, profiles and ingest results."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Group
from rich.markup import escape
from rich.table import Table

from cohortsync.events.pipeline import IngestResult
from cohortsync.store.base import ProfileView


def stats_tables(stats: Mapping[str, Mapping[str, Any]]) -> Group:
    """One table per section of `cohortsync stats`."""
    tables = []
    for section, label in (
        ("events", "by_type"),
        ("identifiers", "by_kind"),
        ("quarantined", "by_reason"),
    ):
        part = stats[section]
        table = Table(title=f"{section} ({part['total']:,})", title_justify="left")
        table.add_column(label.removeprefix("by_"))
        table.add_column("count", justify="right")
        for key, count in part[label].items():
            table.add_row(escape(key), f"{count:,}")
        if section == "identifiers" and part.get("rejected"):
            for key, count in part["rejected"].items():
                table.add_row(f"[yellow]{key} (rejected)[/]", f"{count:,}")
        tables.append(table)
    profiles = stats["profiles"]
    summary = Table(title="profiles", title_justify="left")
    summary.add_column("profiles", justify="right")
    summary.add_column("merged away", justify="right")
    summary.add_row(f"{profiles['total']:,}", f"{profiles.get('merged_away', 0):,}")
    return Group(summary, *tables)


def ingest_table(rows: list[tuple[str, IngestResult]]) -> Table:
    """Received, stored, duplicate and quarantined counts per input."""
    table = Table(title="ingested", title_justify="left")
    for column in ("input", "received", "stored", "duplicates", "quarantined"):
        table.add_column(column, justify="left" if column == "input" else "right")
    for name, r in rows:
        quarantined = f"[red]{r.quarantined:,}[/]" if r.quarantined else "0"
        table.add_row(
            escape(name), f"{r.received:,}", f"{r.stored:,}", f"{r.duplicates:,}", quarantined
        )
    return table


def profile_group(view: ProfileView) -> Group:
    """Identifiers, traits, merges and recent events of one profile."""
    head = Table.grid(padding=(0, 2))
    head.add_row("[bold]profile[/]", view.profile_id)
    head.add_row("first seen", str(view.first_seen))
    head.add_row("last seen", str(view.last_seen))
    identifiers = Table(title="identifiers", title_justify="left")
    for column in ("kind", "value", "first seen"):
        identifiers.add_column(column)
    for ident in view.identifiers:
        identifiers.add_row(ident["kind"], escape(ident["value"]), str(ident["first_seen"]))
    traits = Table(title="traits", title_justify="left")
    traits.add_column("trait")
    traits.add_column("value")
    for name, value in view.traits.items():
        traits.add_row(escape(name), escape(repr(value)))
    merges = Table(title="merges", title_justify="left")
    for column in ("merged at", "from profile", "into", "via"):
        merges.add_column(column)
    for merge in view.merges:
        merges.add_row(
            str(merge["merged_at"]), merge["from_profile"], merge["into_profile"], merge["via"]
        )
    events = Table(title="recent events", title_justify="left")
    for column in ("timestamp", "type", "event"):
        events.add_column(column)
    for event in view.recent_events:
        events.add_row(str(event["timestamp"]), event["type"], escape(event["event"] or ""))
    return Group(head, identifiers, traits, merges, events)
