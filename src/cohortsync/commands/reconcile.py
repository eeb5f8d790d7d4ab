"""`cohortsync sync --reconcile`: the table (one row per route) and the JSON of a reconcile."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from cohortsync.commands.shared import console, show
from cohortsync.engine import Engine, ReconcileReport, RouteReconcile
from cohortsync.errors import InputError
from cohortsync.server.admin_client import engine_or_server

SERVED = (
    "sync --reconcile needs the store, which a running `cohortsync serve` holds: stop serve "
    "and run it again"
)


def run_reconcile(
    project: Path | str | None,
    audience: str | None,
    destination: str | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Reconcile and print the outcome (a table, or JSON)."""
    with engine_or_server(project) as engine:
        if not isinstance(engine, Engine):
            raise InputError(SERVED)
        report = engine.reconcile(audience, destination, dry_run)
    show(reconcile_json(report), as_json, lambda: reconcile_table(report))
    if not as_json:
        for r in report.routes:
            if _note(r):
                line = f"{r.destination} {r.audience}: {r.action}: {_note(r)}"
                console.print(escape(line), soft_wrap=True)
        console.print(escape(summary(report)), soft_wrap=True)


def summary(report: ReconcileReport) -> str:
    """One line: whether anything changed on a platform in this run."""
    if report.changed:
        rebuilt = sum(1 for r in report.routes if r.requests)
        return f"{rebuilt} route(s) sent rebuild requests; run again to confirm they are in sync"
    return "nothing changed on any platform"


def reconcile_table(report: ReconcileReport) -> Table:
    """Per route: desired members, the platform's count, the drift, the action, requests (the
    notes follow the table)."""
    title = (
        f"reconcile{' (dry run)' if report.dry_run else ''}: threshold "
        f"{report.threshold:.2%} of the list, {report.duration_ms:,.0f} ms"
    )
    table = Table(title=title, title_justify="left")
    for column in ("destination", "audience"):
        table.add_column(column)
    for column in ("desired", "platform", "drift", "requests"):
        table.add_column(column, justify="right")
    table.add_column("action", no_wrap=True)
    for r in report.routes:
        table.add_row(
            escape(r.destination),
            escape(r.audience),
            "—" if r.desired is None else f"{r.desired:,}",
            _count(r),
            _drift(r),
            f"{r.requests:,}",
            escape(r.action),
        )
    return table


def reconcile_json(report: ReconcileReport) -> dict[str, Any]:
    """The report as JSON-able values."""
    return {
        "started_at": report.started_at,
        "duration_ms": report.duration_ms,
        "threshold": report.threshold,
        "dry_run": report.dry_run,
        "changed": report.changed,
        "routes": [_route_json(r) for r in report.routes],
    }


def _route_json(r: RouteReconcile) -> dict[str, Any]:
    platform = r.platform
    return {
        "destination": r.destination,
        "audience": r.audience,
        "desired": r.desired,
        "platform_count": None
        if platform is None
        else {"lower": platform.lower, "upper": platform.upper, "exact": platform.exact},
        "drift": r.drift,
        "drift_share": r.share,
        "action": r.action,
        "requests": r.requests,
        "members_sent": r.sent,
        "members_refused": r.rejected,
        "retryable": r.retryable,
        "note": r.note,
    }


def _count(r: RouteReconcile) -> str:
    if r.platform is None:
        return "—"
    if r.platform.exact:
        return f"{r.platform.lower:,}"
    return f"{r.platform.lower:,}–{r.platform.upper:,}"


def _drift(r: RouteReconcile) -> str:
    if r.drift is None or r.share is None:
        return "—"
    return f"{r.drift:,} ({r.share:.1%})"


def _note(r: RouteReconcile) -> str:
    parts = [r.note]
    if r.sent:
        parts.append(f"{r.sent:,} members sent")
    if r.rejected:
        parts.append(f"{r.rejected:,} refused (no identifier the platform takes)")
    return "; ".join(p for p in parts if p)
