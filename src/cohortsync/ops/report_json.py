"""The report as JSON (`report --format json`, and what the HTML report and API show): plain
dicts of the report's figures with the field names the README documents."""

from __future__ import annotations

from typing import Any

from cohortsync.ops.report import Arm, AudienceReport, CurvePoint, Report
from cohortsync.ops.report_latency import Latency
from cohortsync.ops.report_trend import Cost, Week

UNBOUNDED = "unbounded"
"""A cost per incremental conversion with no incremental conversions (≤ 0) to divide by."""

DISCOUNT_SPENT_ANYWAY = (
    "holdout conversion rate × treatment profiles × average discount per discounted treatment "
    "conversion: the discount given on conversions the holdout says would have happened anyway"
)


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
        "orders": arm.orders,
        "discounted_orders": arm.discounted_orders,
        "discount_share": arm.discount_share,
        "discount_total": arm.discount_total,
        "discounted_orders_with_amount": arm.priced_orders,
        "average_discount": arm.average_discount,
        "suppression_failures": arm.suppression_failures,
    }


def _bounded(cost: Cost, value: float | None) -> float | str | None:
    if not cost.measured:
        return None
    return UNBOUNDED if value is None else value


def cost_json(cost: Cost) -> dict[str, Any]:
    """Spend in one currency and its cost per incremental conversion."""
    return {
        "currency": cost.currency,
        "spend": cost.spend,
        "cost_per_incremental_conversion": _bounded(cost, cost.per_incremental),
        "cost_per_incremental_conversion_ci": None
        if not cost.measured
        else [
            _bounded(cost, cost.per_incremental_low),
            _bounded(cost, cost.per_incremental_high),
        ],
    }


def week_json(week: Week) -> dict[str, Any]:
    """One ISO week of the trend."""
    return {
        "week": week.week,
        "starts": week.starts.isoformat(),
        "treatment_profiles": week.treatment_profiles,
        "treatment_converted": week.treatment_converted,
        "holdout_profiles": week.holdout_profiles,
        "holdout_converted": week.holdout_converted,
        "lift": week.lift,
        "lift_ci": _pair(week.lift_low, week.lift_high),
        "incremental_conversions": week.incremental,
        "incremental_conversions_ci": _pair(week.incremental_low, week.incremental_high),
        "spend": [cost_json(c) for c in week.spend],
    }


def _curve(point: CurvePoint) -> dict[str, Any]:
    return {"day": point.day, "treatment": point.treatment, "holdout": point.holdout}


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
        "suppression_failures": one.treatment.suppression_failures
        + one.holdout.suppression_failures,
        "discount_spent_anyway": one.discount_spent_anyway,
        "discount_spent_anyway_is": DISCOUNT_SPENT_ANYWAY,
        "spend": [cost_json(c) for c in one.spend],
        "conversion_curve": [_curve(p) for p in one.curve],
        "weeks": [week_json(w) for w in one.weeks],
    }


def latency_json(found: Latency) -> dict[str, Any]:
    """Purchase → suppression acknowledged, per destination."""
    return {
        "purchases": found.purchases,
        "purchases_with_change": found.purchases_with_change,
        "purchases_acknowledged": found.purchases_acknowledged,
        "purchases_without_acknowledged_change": found.purchases_without_acknowledged_change,
        "destinations": [
            {
                "destination": d.destination,
                "acknowledged": d.acknowledged,
                "waiting": d.waiting,
                "p50_seconds": d.p50,
                "p95_seconds": d.p95,
                "p99_seconds": d.p99,
                "buckets": [
                    {
                        "label": b.label,
                        "from_seconds": b.low,
                        "to_seconds": b.high,
                        "count": b.count,
                    }
                    for b in d.buckets
                ],
            }
            for d in found.destinations
        ],
    }


def report_json(found: Report) -> dict[str, Any]:
    """The report as `report --format json` prints it."""
    return {
        "since": found.since.isoformat(),
        "until": found.until.isoformat(),
        "window": found.window,
        "conversion_event": found.conversion_event,
        "value_property": found.value_property,
        "discount_properties": list(found.discount_properties),
        "coupon_properties": list(found.coupon_properties),
        "suppression_audiences": list(found.suppression_audiences),
        "audiences": [audience_json(a) for a in found.audiences],
        "latency": None if found.latency is None else latency_json(found.latency),
    }
