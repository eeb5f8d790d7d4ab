"""Terminal pictures: Rich tables for stats, profiles, ingest results and memberships."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from itertools import groupby
from typing import Any

from rich import box
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.markup import escape
from rich.measure import Measurement
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from cohortsync.audiences.compute import ComputeReport
from cohortsync.audiences.members import Member, Preview
from cohortsync.events.pipeline import IngestResult
from cohortsync.moments import to_datetime
from cohortsync.ops.drift import Drift
from cohortsync.realtime.cadence import Schedule
from cohortsync.store.base import ProfileView
from cohortsync.store.outbox import PlatformReport, RouteStatus
from cohortsync.sync.profile_state import Membership
from cohortsync.sync.run import SyncReport
from cohortsync.sync.worker import DeliveryReport

_STATUS_FIGURES = ("desired", "acked", "pending", "retrying", "failed", "dead", "match")
_UNBOUNDED = 10_000  # columns: wide enough to measure any table at its natural width

NOTHING = "—"
"""Shown where a platform never said anything (never 0: nothing was read)."""


def platform_said(report: PlatformReport) -> str:
    """`1,000–1,200 people (replace_in_progress), 3 invalid` (Meta), `match 61–70%, 2 invalid`
    (Google), or `—` when the platform never reported anything."""
    parts = []
    if report.size_low is not None and report.size_high is not None:
        if report.size_low < 0 or report.size_high < 0:
            size = "too few to show"
        elif report.size_low == report.size_high:
            size = f"{report.size_low:,} people"
        else:
            size = f"{report.size_low:,}–{report.size_high:,} people"
        status = report.operation_status
        parts.append(size if status in (None, "Normal") else f"{size} ({status})")
    elif report.operation_status not in (None, "Normal"):
        parts.append(str(report.operation_status))
    if report.match_rate_low is not None and report.match_rate_high is not None:
        parts.append(f"match {report.match_rate_low}–{report.match_rate_high}%")
    if report.invalid_entries is not None:
        parts.append(f"{report.invalid_entries:,} invalid")
    return ", ".join(parts) or NOTHING


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
    tests = stats.get("test_profiles") or {}
    if tests.get("total"):
        summary.caption = (
            f"not counted: {tests['total']:,} test profiles and their {tests['events']:,} events "
            "(`cohortsync validate --cleanup` removes them)"
        )
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


def profile_group(view: ProfileView, held: Sequence[Membership] = ()) -> Group:
    """Identifiers, traits, merges, recent events and current audiences of one profile."""
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
    audiences = Table(title="audiences now", title_justify="left")
    for column in ("audience", "holdout", "since"):
        audiences.add_column(column)
    for m in held:
        if m.kind == "audience":
            since = to_datetime(m.entered_at_us).isoformat()
            audiences.add_row(escape(m.name), "yes" if m.holdout else "", since)
    return Group(head, identifiers, traits, merges, events, audiences)


def compute_table(report: ComputeReport) -> Table:
    """Size, entered, exited and holdout of every segment and audience after a compute (an
    evaluation that was not recorded says so, and why, and has no entries or exits)."""
    if report.recorded:
        title = (
            f"computed as of {report.as_of.isoformat()} in {report.duration_ms:,.0f} ms "
            f"(run {report.run_id})"
        )
    else:
        title = (
            f"as of {report.as_of.isoformat()} — evaluated, not recorded ({report.reason}) "
            f"in {report.duration_ms:,.0f} ms"
        )
    table = Table(title=escape(title), title_justify="left")
    for column in ("kind", "name", "size", "entered", "exited", "holdout"):
        table.add_column(column, justify="left" if column in ("kind", "name") else "right")
    for row in report.rows:
        holdout = f"{row.holdout:,}" if row.kind == "audience" else ""
        table.add_row(
            row.kind,
            escape(row.name),
            f"{row.size:,}",
            _moved(row.entered, "green"),
            _moved(row.exited, "yellow"),
            holdout,
        )
    return table


def _moved(count: int | None, colour: str) -> str:
    """A count of entries or exits: coloured when some, `—` when nothing was recorded."""
    if count is None:
        return "—"
    return f"[{colour}]{count:,}[/]" if count else "0"


def overlap_table(overlaps: Mapping[tuple[str, str], int], top: int = 3) -> Table:
    """Each audience's size and the audiences it shares most members with."""
    names = list(dict.fromkeys(a for a, _ in overlaps))
    table = Table(title="audience overlap (shared members)", title_justify="left")
    table.add_column("audience")
    table.add_column("size", justify="right")
    table.add_column(f"largest overlaps (of {len(names) - 1} others)")
    for name in names:
        shared = sorted(
            ((overlaps[(name, other)], other) for other in names if other != name),
            reverse=True,
        )
        text = ", ".join(f"{escape(other)} {count:,}" for count, other in shared[:top] if count)
        table.add_row(escape(name), f"{overlaps[(name, name)]:,}", text or "none")
    return table


def members_table(members: Sequence[Member], title: str) -> Table:
    """One row per member: profile, first user_id, email and phone, and holdout."""
    table = Table(title=title, title_justify="left")
    audience = any(m.holdout is not None for m in members)
    columns = ["profile", "user_id", "email", "phone"] + (["holdout"] if audience else [])
    for column in columns:
        table.add_column(column)
    for m in members:
        cells = [escape(v or "") for v in (m.profile_id, m.user_id, m.email, m.phone)]
        if audience:
            cells.append("yes" if m.holdout else "")
        table.add_row(*cells)
    return table


def member_rows(members: Sequence[Member]) -> list[tuple[Any, ...]]:
    """`members --format csv`: a header of the member fields, then one row per member."""
    header = tuple(f.name for f in dataclasses.fields(Member))
    return [header, *(dataclasses.astuple(m) for m in members)]


def preview_group(preview: Preview) -> Group:
    """Size, a sample of members, overlap with the other audiences, and the rules in English."""
    head = Table.grid(padding=(0, 2))
    head.add_row(f"[bold]{preview.kind}[/]", escape(preview.name))
    head.add_row("size", f"{preview.size:,}")
    if preview.kind == "audience":
        head.add_row("holdout", f"{preview.holdout:,}")
    sample = members_table(preview.sample, f"sample ({len(preview.sample)} of {preview.size:,})")
    overlap = Table(title="overlap with audiences", title_justify="left")
    overlap.add_column("audience")
    overlap.add_column("shared members", justify="right")
    for name, count in preview.overlap.items():
        overlap.add_row(escape(name), f"{count:,}")
    return Group(head, sample, overlap, escape(preview.explanation))


def sync_table(report: SyncReport) -> Table:
    """Per destination and audience: batches, acknowledged (or, for a dry run, would send),
    rejected with the reasons, retrying, dead letters."""
    planned = report.planned
    title = (
        f"sync: planned {planned.adds:,} adds, {planned.removes:,} removes, "
        f"{planned.conversions:,} conversions in {report.duration_ms:,.0f} ms"
    )
    table = Table(title=title, title_justify="left")
    table.add_column("destination")
    table.add_column("audience")
    for column in ("batches", "acknowledged", "rejected", "retrying", "dead-lettered"):
        table.add_column(column, justify="right")
    table.add_column("note")
    for (destination, audience), t in sorted(
        report.delivery.tallies.items(), key=lambda item: (item[0][0], item[0][1] or "")
    ):
        note = escape(t.error or "")
        if t.dry_run:
            note = note or "dry run: written, not sent"
        refused = ", ".join(f"{n:,} {escape(k)}" for k, n in _most(t.reasons))
        stats = ", ".join(f"{k} {v:,}" for k, v in sorted(t.stats.items()))
        table.add_row(
            escape(destination),
            escape(audience or "(conversions)"),
            f"{t.batches:,}",
            f"[cyan]{t.would_send:,} would send[/]" if t.dry_run else f"{t.acknowledged:,}",
            f"[yellow]{t.rejected:,}[/]" if t.rejected else "0",
            f"{t.retrying:,}",
            f"[red]{t.dead_lettered:,}[/]" if t.dead_lettered else "0",
            "; ".join(part for part in (note, refused and f"refused: {refused}", stats) if part),
        )
    return table


def _most(counts: Mapping[str, int]) -> list[tuple[str, int]]:
    """Counts, largest first."""
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def status_table(rows: Sequence[RouteStatus], wide: bool = False) -> RenderableType:
    """`cohortsync status`: each audience × destination, its delivery state and match rate.

    One line per route with full names when `wide` or when the terminal has room for it;
    otherwise routes are grouped under their audience and long names end in an ellipsis."""
    return _Fitted(_status_lines(rows), partial(_status_groups, rows), wide)


def drift_table(drifts: Sequence[Drift]) -> RenderableType:
    """`cohortsync status`: what platforms that read audiences back show (names, descriptions
    edited there), one line per audience read; nothing when none was read."""
    if not drifts:
        return Group()
    table = Table(title="platform drift", title_justify="left")
    table.add_column("audience")
    table.add_column("destination")
    table.add_column("on the platform")
    for d in drifts:
        if d.error:
            state = f"[red]could not read: {escape(d.error[:80])}[/]"
        elif d.problem:
            state = f"[yellow]drift: {escape(d.problem)}[/]"
        else:
            state = "as cohortsync set it"
        table.add_row(escape(d.audience), escape(d.destination), state)
    return table


def _status_cells(s: RouteStatus, short: bool = False) -> list[str]:
    """desired, acked, pending, retrying, failed, dead, match and last sync of one route."""
    rate = "—" if s.match_rate is None or s.audience is None else f"{s.match_rate:.0%}"
    behind = s.desired != s.acknowledged
    moment = "%m-%d %H:%M" if short else "%Y-%m-%d %H:%M"
    return [
        f"{s.desired:,}",
        _acked(s, behind),
        f"{s.pending:,}",
        f"{s.retrying:,}",
        f"[yellow]{s.failed:,}[/]" if s.failed else "0",
        f"[red]{s.dead_lettered:,}[/]" if s.dead_lettered else "0",
        rate,
        f"{s.last_sync:{moment}}" if s.last_sync else "never",
    ]


def _status_note(s: RouteStatus, labelled: bool = False) -> str:
    """When a failing route tries next, and its last error (shortened)."""
    when = f"{s.next_attempt:%H:%M:%S}" if s.next_attempt and s.retrying else ""
    note = (f"next try {when}: " if labelled else f"{when} ") if when else ""
    return note + escape((s.last_error or "")[:80])


def _status_lines(rows: Sequence[RouteStatus]) -> Table:
    """One line per route, full names."""
    table = Table(title="sync status", title_justify="left")
    table.add_column("audience")
    table.add_column("destination")
    for column in _STATUS_FIGURES:
        table.add_column(column, justify="right")
    table.add_column("last sync")
    reported = any(platform_said(s.platform) != NOTHING for s in rows)
    if reported:  # once any platform said something; `—` where one said nothing
        table.add_column("platform says")
        table.add_column("read")
    errors = any(s.last_error for s in rows)
    if errors:
        table.add_column("next try / error")
    for s in rows:
        cells = [escape(s.audience or "(conversions)"), escape(s.destination), *_status_cells(s)]
        cells += _platform_cells(s) if reported else []
        if errors:
            cells.append(_status_note(s))
        table.add_row(*cells)
    return table


def _platform_cells(s: RouteStatus, short: bool = False) -> list[str]:
    """What the platform says of the audience and when it was read, `—` for nothing read."""
    said = platform_said(s.platform)
    read = s.platform.read_at
    moment = "%m-%d %H:%M" if short else "%Y-%m-%d %H:%M"
    return [escape(said), NOTHING if read is None or said == NOTHING else f"{read:{moment}}"]


def _acked(s: RouteStatus, behind: bool) -> str:
    """What a destination acknowledged, or for a dry-run one what was written as a dry run."""
    if s.dry_run:
        return f"[cyan]{s.dry_run_written:,} dry run[/]"
    return f"[yellow]{s.acknowledged:,}[/]" if behind else f"{s.acknowledged:,}"


def _status_groups(rows: Sequence[RouteStatus], width: int) -> Group:
    """Routes under their audience's name, figures aligned across groups, errors below each
    group: fits 80 columns with the demo's names and counts up to 9,999,999."""
    # destinations indented under their audience's name
    cells = [["  " + escape(s.destination), *_status_cells(s, short=True)] for s in rows]
    header = ["destination", *_STATUS_FIGURES, "last sync"]
    widths = [
        max([cell_len(name), *(Text.from_markup(row[i]).cell_len for row in cells)])
        for i, name in enumerate(header)
    ]
    gap = 2 if sum(widths) + 2 * (len(widths) - 1) <= width else 1
    widths[0] = max(8, min(widths[0], width - sum(widths[1:]) - gap * (len(widths) - 1)))

    def table(show_header: bool) -> Table:
        # box SIMPLE_HEAD draws no lines but the header's rule; its one-space divider plus
        # `gap - 1` of padding separates the columns
        grid = Table(
            box=box.SIMPLE_HEAD,
            show_edge=False,
            show_header=show_header,
            pad_edge=False,
            padding=(0, 0, 0, gap - 1),
        )
        for i, (name, size) in enumerate(zip(header, widths, strict=True)):
            grid.add_column(
                name,
                justify="left" if i in (0, len(header) - 1) else "right",
                width=size,
                no_wrap=True,
                overflow="ellipsis",
            )
        return grid

    parts: list[RenderableType] = [Text("sync status", style="table.title"), table(True)]
    for audience, group in groupby(
        zip(rows, cells, strict=True), key=lambda pair: pair[0].audience
    ):
        routes = table(False)
        notes = []
        for s, row in group:
            routes.add_row(*row)
            said, read = _platform_cells(s, short=True)
            if said != NOTHING:
                note = f"[cyan]{escape(s.destination)} says:[/] {said} (read {read})"
                notes.append(Padding(Text.from_markup(note), (0, 0, 0, 4)))
            if s.last_error:
                note = f"[yellow]{escape(s.destination)}:[/] {_status_note(s, labelled=True)}"
                notes.append(Padding(Text.from_markup(note), (0, 0, 0, 4)))
        heading = Text(audience or "(conversions)", style="bold", no_wrap=True, overflow="ellipsis")
        parts += [heading, routes, *notes]
    return Group(*parts)


def demo_table(
    report: ComputeReport,
    status: Sequence[RouteStatus],
    dry: set[str],
    delivery: DeliveryReport | None = None,
) -> Table:
    """Each audience: its size and holdout, and what each destination holds of it now (for a
    dry-run destination, what was written as a dry run); each conversion stream below, with
    the reasons of refusals from `delivery`, the sync that just ran."""
    lines = {(s.destination, s.audience): s for s in status}
    destinations = sorted({s.destination for s in status if s.audience is not None})
    table = Table(title="audiences → destinations", title_justify="left")
    table.add_column("audience")
    table.add_column("members", justify="right")
    table.add_column("holdout", justify="right")
    for name in destinations:
        table.add_column(name, justify="right")
    for row in report.rows:
        if row.kind != "audience":
            continue
        cells = []
        for name in destinations:
            line = lines.get((name, row.name))
            if line is None:
                cells.append("—")
                continue
            failed = line.failed + line.dead_lettered
            note = f" [yellow]({failed:,} refused)[/]" if failed else ""
            if name in dry:
                cells.append(f"[cyan]{line.dry_run_written:,} dry run[/]{note}")
            else:
                cells.append(f"{line.acknowledged:,}{note}")
        table.add_row(escape(row.name), f"{row.size:,}", f"{row.holdout:,}", *cells)
    captions = []
    for (name, audience), line in sorted(lines.items(), key=lambda item: item[0][0]):
        if audience is None:
            if name in dry:
                done = f"{line.dry_run_written:,} would be sent (written as a dry run)"
            else:
                done = f"{line.acknowledged:,} sent"
            failed = line.failed + line.dead_lettered
            tally = delivery.tallies.get((name, None)) if delivery is not None else None
            why = ", ".join(f"{n:,} {escape(k)}" for k, n in _most(tally.reasons)) if tally else ""
            refused = f"; {failed:,} refused" + (f": {why}" if why else "") if failed else ""
            captions.append(f"conversions → {name}: {done}{refused}")
    table.caption = "\n".join(captions) or None
    return table


def schedule_table(schedules: Sequence[Schedule], wide: bool = False) -> RenderableType:
    """Each audience's refresh: real time, or its cadence with the last and next run."""
    compact = lambda _width: _schedule_lines(schedules, compact=True)  # noqa: E731
    return _Fitted(_schedule_lines(schedules), compact, wide)


def _schedule_lines(schedules: Sequence[Schedule], compact: bool = False) -> Table:
    """The refresh table; `compact`: lighter lines, dates without the year, names cut."""
    moment = "%m-%d %H:%M" if compact else "%Y-%m-%d %H:%M"
    table = Table(
        title="refresh",
        title_justify="left",
        box=box.SIMPLE_HEAD if compact else box.HEAVY_HEAD,
        show_edge=not compact,
        pad_edge=not compact,
        padding=(0, 0, 0, 1) if compact else (0, 1),
    )
    table.add_column("audience", overflow="ellipsis")
    table.add_column("refresh", no_wrap=compact)
    table.add_column("last run", no_wrap=compact)
    table.add_column("next run", no_wrap=compact)
    for s in schedules:
        last = "—" if s.last_run_us is None else f"{to_datetime(s.last_run_us):{moment}}"
        if s.next_run_us is None:
            upcoming = "as events arrive"
        elif s.next_run_us == 0:
            upcoming = "at the next start of serve"
        else:
            upcoming = f"{to_datetime(s.next_run_us):{moment}}"
        table.add_row(escape(s.audience), escape(s.refresh), last, upcoming)
    return table


class _Fitted:
    """A table with full names on one line per row when it fits the width (or `wide` asks
    for it, however wide), else a compact layout of the same figures for that width."""

    def __init__(self, full: Table, compact: Callable[[int], RenderableType], wide: bool) -> None:
        self.full = full
        self.compact = compact
        self.wide = wide

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        natural = self.__rich_measure__(console, options).maximum
        if self.wide or natural <= options.max_width:
            yield self.full
        else:
            yield self.compact(options.max_width)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        """The full table's natural width, not capped by the terminal's."""
        return Measurement.get(console, options.update_width(_UNBOUNDED), self.full)
