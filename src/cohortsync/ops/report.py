"""Holdout lift per audience: who entered in a period, split by the holdout flag, who converted
within the report window after entering, with what discount, and what the audience's spend
bought (one statement per audience, both stores); and purchase → suppression latency."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from cohortsync.config.models import Project
from cohortsync.errors import ConfigError, NotFoundError
from cohortsync.ops.lift import ALPHA, Lift, lift, srm_p_value
from cohortsync.ops.lint_tree import segment_suppresses
from cohortsync.ops.report_latency import Latency, latency
from cohortsync.ops.report_sql import ARMS, coupon_of, discount_of, number_of
from cohortsync.ops.report_trend import Cost, Week, costs, weeks
from cohortsync.ops.spend import spend_rows
from cohortsync.segments.ast import SegmentProject
from cohortsync.segments.names import event_key
from cohortsync.store.base import Store
from cohortsync.store.sql import Tx

SRM_ALERT = 0.01
"""An SRM p-value below this means the split is not the configured one: read no lift."""


@dataclass(frozen=True)
class Arm:
    """One arm's entrants, converters, the revenue of their conversions and their discounts."""

    profiles: int = 0
    converted: int = 0
    revenue: float = 0.0
    revenue_squares: float = 0.0
    orders: int = 0
    """Conversions counted (every conversion event in the window, not only the first)."""
    discounted_orders: int = 0
    discount_total: float = 0.0
    """Sum of the discount amounts (coupon-only orders add none)."""
    suppression_failures: int = 0
    """Discounted orders placed while already in a purchase-suppression audience."""
    priced_orders: int = 0
    """Discounted orders with an amount (a coupon alone gives none)."""

    def __add__(self, other: Arm) -> Arm:
        return Arm(*(getattr(self, f) + getattr(other, f) for f in Arm.__dataclass_fields__))

    @property
    def discount_share(self) -> float | None:
        """Discounted orders / orders; None without orders."""
        return self.discounted_orders / self.orders if self.orders else None

    @property
    def average_discount(self) -> float | None:
        """Discount per discounted order with an amount; None without one."""
        return self.discount_total / self.priced_orders if self.priced_orders else None


@dataclass(frozen=True)
class CurvePoint:
    """Share of each arm's profiles that converted within `day` days of entering."""

    day: int
    treatment: float | None
    holdout: float | None


@dataclass(frozen=True)
class AudienceReport:
    """The lift of one audience with a holdout over one period."""

    audience: str
    holdout_percent: float
    treatment: Arm
    holdout: Arm
    lift: Lift | None
    """None while an arm has nobody."""
    srm_p_value: float | None
    incremental_revenue: float | None
    incremental_revenue_low: float | None
    incremental_revenue_high: float | None
    discount_spent_anyway: float | None = None
    """Holdout conversion rate × treatment profiles × average discount per discounted
    treatment conversion: discount given on conversions the holdout says would have happened
    without the audience. None while an arm has nobody or no treatment discount has an
    amount."""
    curve: tuple[CurvePoint, ...] = ()
    spend: tuple[Cost, ...] = ()
    """Spend in the period per currency, and the cost per incremental conversion."""
    weeks: tuple[Week, ...] = ()

    @property
    def srm_alert(self) -> bool:
        """The observed split is unlikely under the configured holdout share."""
        return self.srm_p_value is not None and self.srm_p_value < SRM_ALERT


@dataclass(frozen=True)
class Report:
    """Every audience with a holdout over one period, and purchase → suppression latency."""

    since: datetime
    until: datetime
    window: str
    conversion_event: str
    value_property: str | None
    audiences: tuple[AudienceReport, ...]
    discount_properties: tuple[str, ...] = ()
    coupon_properties: tuple[str, ...] = ()
    suppression_audiences: tuple[str, ...] = ()
    """Audiences holding every recent buyer: a discounted order placed in one is a failure."""
    latency: Latency | None = None


def conversion_of(project: Project) -> tuple[str, str | None]:
    """The conversion event and its value property (from `report:` or the first rule)."""
    rules = project.conversions
    event = project.report.conversion_event or (rules[0].event if rules else None)
    if event is None:
        raise ConfigError(
            "report needs a conversion event — add a conversions: rule or report.conversion_event"
        )
    value = next((r.value for r in rules if r.event == event and r.value), None)
    return event, value


def suppression_audiences(segments: SegmentProject, event: str) -> tuple[str, ...]:
    """The audiences whose segment holds every recent buyer of `event` (as lint reads it)."""
    purchases = {event_key(event)}
    return tuple(
        sorted(
            a.name
            for a in segments.audiences.values()
            if segment_suppresses(segments, a.segment, purchases)
        )
    )


def report(
    store: Store,
    project: Project,
    segments: SegmentProject,
    since: datetime,
    until: datetime,
    audience: str | None = None,
) -> Report:
    """Lift, discounts, spend and curves of each audience with a holdout (or of `audience`)
    for entries in [since, until], and the latency of purchases in that period."""
    if audience is not None and audience not in segments.audiences:
        raise NotFoundError(f"no audience named {audience!r} — see the audiences: section")
    event, prop = conversion_of(project)
    settings = project.report
    names = [audience] if audience else sorted(segments.audiences)
    chosen = [segments.audiences[n] for n in names if segments.audiences[n].holdout_percent]
    suppressing = suppression_audiences(segments, event)
    window = settings.window_seconds()
    found = []
    for one in chosen:
        with store.sql.reading() as tx:
            rows = _arm_rows(tx, one.name, since, until, event, prop, project, suppressing)
        days = since.astimezone(UTC).date(), until.astimezone(UTC).date()
        spent = list(spend_rows(store.sql, one.name, *days))
        found.append(_audience(one.name, one.holdout_percent or 0.0, rows, window, spent))
    routes = {a.name: a.destinations for a in segments.audiences.values() if a.destinations}
    return Report(
        since,
        until,
        settings.window,
        event,
        prop,
        tuple(found),
        settings.discount_properties,
        settings.coupon_properties,
        suppressing,
        latency(store.sql, event, since, until, window, suppressing, routes),
    )


def _arm_rows(
    tx: Tx,
    audience: str,
    since: datetime,
    until: datetime,
    event: str,
    prop: str | None,
    project: Project,
    suppressing: tuple[str, ...],
) -> list[tuple[Any, ...]]:
    settings = project.report
    discounts = {f"discount_{i}": p for i, p in enumerate(settings.discount_properties)}
    coupons = {f"coupon_{i}": p for i, p in enumerate(settings.coupon_properties)}
    params = {"audience": audience, "since": since, "until": until, "event": event}
    params |= {"prop": prop or ""} | discounts | coupons
    return tx.run(
        ARMS,
        params,
        value=number_of(tx.dialect, "prop") if prop else "NULL",
        discount=discount_of(tx.dialect, list(discounts)),
        coupon=coupon_of(tx.dialect, list(coupons)),
        suppressing=tx.among("suppressing", suppressing),
        window=str(settings.window_seconds()),
    )


def _audience(
    name: str,
    percent: float,
    rows: list[tuple[Any, ...]],
    window_seconds: int,
    spent: list[tuple[date, str, float]],
) -> AudienceReport:
    arms: dict[bool, Arm] = {}
    by_week: dict[tuple[bool, int], tuple[int, int]] = {}
    first_days: dict[tuple[bool, int], int] = {}
    for row in rows:
        flag, week, first_day, n, x, rev, rev2, orders, discounted, discount, failures, priced = row
        part = Arm(
            int(n), int(x), float(rev), float(rev2), int(orders), int(discounted),
            float(discount), int(failures), int(priced),
        )  # fmt: skip
        held = bool(flag)
        arms[held] = arms.get(held, Arm()) + part
        n_w, x_w = by_week.get((held, int(week)), (0, 0))
        by_week[held, int(week)] = (n_w + int(n), x_w + int(x))
        if first_day is not None:
            first_days[held, int(first_day)] = first_days.get((held, int(first_day)), 0) + int(n)
    treatment, holdout = arms.get(False, Arm()), arms.get(True, Arm())
    curve = _curve(treatment, holdout, first_days, window_seconds)
    trend = weeks(by_week, spent)
    totals: dict[str, float] = {}
    for _, currency, amount in spent:
        totals[currency] = totals.get(currency, 0.0) + amount
    n_t, n_c = treatment.profiles, holdout.profiles
    if n_t == 0 or n_c == 0:
        srm = srm_p_value(n_t, n_c, percent / 100) if n_t + n_c else None
        return AudienceReport(
            name, percent, treatment, holdout, None, srm, None, None, None, None, curve,
            costs(totals, None), trend,
        )  # fmt: skip
    found = lift(treatment.converted, n_t, holdout.converted, n_c)
    revenue = _incremental_revenue(treatment, holdout)
    srm = srm_p_value(n_t, n_c, percent / 100)
    per_discount = treatment.average_discount
    anyway = None if per_discount is None else holdout.converted / n_c * n_t * per_discount
    incremental = (found.incremental, found.incremental_low, found.incremental_high)
    return AudienceReport(
        name, percent, treatment, holdout, found, srm, *revenue, anyway, curve,
        costs(totals, incremental), trend,
    )  # fmt: skip


def _curve(
    treatment: Arm, holdout: Arm, first_days: dict[tuple[bool, int], int], window_seconds: int
) -> tuple[CurvePoint, ...]:
    """Cumulative conversion rate per arm by whole days since entry, day 0 to the window."""
    days = max(1, math.ceil(window_seconds / 86400))
    points = []
    done = {False: 0, True: 0}
    for day in range(days + 1):
        for held in done:
            done[held] += first_days.get((held, day), 0)
        points.append(
            CurvePoint(
                day,
                done[False] / treatment.profiles if treatment.profiles else None,
                done[True] / holdout.profiles if holdout.profiles else None,
            )
        )
    return tuple(points)


def _incremental_revenue(t: Arm, c: Arm) -> tuple[float, float | None, float | None]:
    """Revenue per treated profile above the holdout's, times the treated, with a 95% normal
    interval of unequal variances (statsmodels' `zconfint_diff(usevar="unequal")`)."""
    mean_t, mean_c = t.revenue / t.profiles, c.revenue / c.profiles
    diff = mean_t - mean_c
    if t.profiles < 2 or c.profiles < 2:
        return diff * t.profiles, None, None
    var_t = max(t.revenue_squares / t.profiles - mean_t**2, 0.0) / (t.profiles - 1)
    var_c = max(c.revenue_squares / c.profiles - mean_c**2, 0.0) / (c.profiles - 1)
    from scipy.stats import norm  # not at module level: see ops/lift.py

    half = float(norm.ppf(1 - ALPHA / 2)) * math.sqrt(var_t + var_c)
    return diff * t.profiles, (diff - half) * t.profiles, (diff + half) * t.profiles
