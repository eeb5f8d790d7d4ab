"""Paid CAC: spend divided by incremental conversions (with the bounds of their interval), for
the period and by ISO week; amounts in different currencies are never added together."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, timedelta

from cohortsync.ops.lift import diff_interval

EPOCH_MONDAY = date(1969, 12, 29)
"""The Monday that week index 0 of the report's SQL starts on."""


@dataclass(frozen=True)
class Cost:
    """Spend in one currency and what one incremental conversion cost.

    While `measured` (both arms have profiles), a None cost or bound is unbounded: there were
    no incremental conversions (≤ 0) to divide by at that end. Not measured: all None."""

    currency: str
    spend: float
    measured: bool
    per_incremental: float | None
    per_incremental_low: float | None
    """Spend / the upper bound of incremental conversions."""
    per_incremental_high: float | None
    """Spend / the lower bound; None (unbounded) when that bound is ≤ 0."""


@dataclass(frozen=True)
class Week:
    """One ISO week of entries: per-arm counts, lift, spend and cost per incremental conversion."""

    week: str
    """ISO week, e.g. 2026-W10."""
    starts: date
    treatment_profiles: int
    treatment_converted: int
    holdout_profiles: int
    holdout_converted: int
    lift: float | None
    lift_low: float | None
    lift_high: float | None
    incremental: float | None
    incremental_low: float | None
    incremental_high: float | None
    spend: tuple[Cost, ...]


def week_start(index: int) -> date:
    """The Monday of the SQL's week `index`."""
    return EPOCH_MONDAY + timedelta(weeks=index)


def iso_week(monday: date) -> str:
    """`2026-W10`."""
    year, week, _ = monday.isocalendar()
    return f"{year}-W{week:02d}"


def cost(currency: str, spend: float, incremental: tuple[float, float, float] | None) -> Cost:
    """What `spend` bought per incremental conversion (`incremental`: point, low, high)."""
    if incremental is None:
        return Cost(currency, spend, False, None, None, None)
    point, low, high = incremental

    def per(n: float) -> float | None:
        return spend / n if n > 0 else None

    return Cost(currency, spend, True, per(point), per(high), per(low))


def costs(
    spend: Mapping[str, float], incremental: tuple[float, float, float] | None
) -> tuple[Cost, ...]:
    """One `Cost` per currency, sorted by currency."""
    return tuple(cost(c, amount, incremental) for c, amount in sorted(spend.items()))


def weeks(
    arms: Mapping[tuple[bool, int], tuple[int, int]],
    spend: Iterable[tuple[date, str, float]],
) -> tuple[Week, ...]:
    """The weekly trend from (holdout, week index) → (profiles, converted) and daily spend."""
    per_week: dict[date, dict[str, float]] = {}
    for day, currency, amount in spend:
        monday = day - timedelta(days=day.weekday())
        bucket = per_week.setdefault(monday, {})
        bucket[currency] = bucket.get(currency, 0.0) + amount
    mondays = {week_start(i) for _, i in arms} | set(per_week)
    found = []
    for monday in sorted(mondays):
        index = (monday - EPOCH_MONDAY).days // 7
        n_t, x_t = arms.get((False, index), (0, 0))
        n_c, x_c = arms.get((True, index), (0, 0))
        lift = low = high = None
        incremental: tuple[float, float, float] | None = None
        if n_t and n_c:
            lift = x_t / n_t - x_c / n_c
            low, high = diff_interval(x_t, n_t, x_c, n_c)
            incremental = (lift * n_t, low * n_t, high * n_t)
        found.append(
            Week(
                week=iso_week(monday),
                starts=monday,
                treatment_profiles=n_t,
                treatment_converted=x_t,
                holdout_profiles=n_c,
                holdout_converted=x_c,
                lift=lift,
                lift_low=low,
                lift_high=high,
                incremental=incremental and incremental[0],
                incremental_low=incremental and incremental[1],
                incremental_high=incremental and incremental[2],
                spend=costs(per_week.get(monday, {}), incremental),
            )
        )
    return tuple(found)
