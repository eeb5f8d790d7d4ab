"""`report`'s second and third tables: discounts and paid CAC per audience, latency per
destination."""

from __future__ import annotations

from rich.table import Table

from cohortsync.engine import Arm, Cost, Latency, Report


def _share(arm: Arm) -> str:
    share = arm.discount_share
    if share is None:
        return "—"
    return f"{arm.discounted_orders}/{arm.orders} ({share * 100:.1f}%)"


def _money(value: float | None) -> str:
    return "—" if value is None else f"{value:,.2f}"


def cost_text(cost: Cost) -> str:
    """`USD 1,200.00: 40.00 [25.00, unbounded]` (a bound with no incremental conversions is
    unbounded)."""
    head = f"{cost.currency} {cost.spend:,.2f}"
    if not cost.measured:
        return f"{head}: no lift to divide by"

    def one(value: float | None) -> str:
        return "unbounded" if value is None else f"{value:,.2f}"

    return (
        f"{head}: {one(cost.per_incremental)} "
        f"[{one(cost.per_incremental_low)}, {one(cost.per_incremental_high)}]"
    )


def spend_table(found: Report) -> Table:
    """Per audience: discounted orders per arm, discount given anyway, suppression failures,
    spend and cost per incremental conversion."""
    table = Table(title="Discounts and paid CAC (cost per incremental conversion, 95% CI)")
    for column in (
        "audience",
        "discounted: treatment",
        "discounted: holdout",
        "avg discount (treatment)",
        "discount spent anyway",
        "suppression failures",
        "spend: cost per incremental conversion",
    ):
        table.add_column(column)
    for one in found.audiences:
        failures = one.treatment.suppression_failures + one.holdout.suppression_failures
        table.add_row(
            one.audience,
            _share(one.treatment),
            _share(one.holdout),
            _money(one.treatment.average_discount),
            _money(one.discount_spent_anyway),
            f"[red]{failures}[/]" if failures else "0",
            "\n".join(cost_text(c) for c in one.spend) or "no spend ingested",
        )
    if not found.audiences:
        table.caption = "no audience with a holdout"
    return table


def _seconds(value: float | None) -> str:
    if value is None:
        return "—"
    if value < 60:
        return f"{value:.1f}s"
    if value < 3600:
        return f"{value / 60:.1f}m"
    return f"{value / 3600:.1f}h"


def latency_table(found: Latency) -> Table:
    """Per destination: purchases acknowledged, waiting, and p50/p95/p99 latency."""
    table = Table(title="Purchase → suppression acknowledged, per destination")
    for column in ("destination", "acknowledged", "waiting", "p50", "p95", "p99"):
        table.add_column(column)
    for d in found.destinations:
        table.add_row(
            d.destination,
            str(d.acknowledged),
            str(d.waiting),
            _seconds(d.p50),
            _seconds(d.p95),
            _seconds(d.p99),
        )
    table.caption = (
        f"{found.purchases} purchases in the period, {found.purchases_with_change} changed a "
        f"membership, {found.purchases_without_acknowledged_change} have no acknowledged "
        "change yet"
    )
    return table
