"""Holdout lift per audience: who entered in a period, split by the holdout flag, and who
converted within the report window after entering (one statement, both stores)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from cohortsync.config.models import Project
from cohortsync.errors import ConfigError, NotFoundError
from cohortsync.ops.lift import ALPHA, Lift, lift, srm_p_value
from cohortsync.segments.ast import SegmentProject
from cohortsync.store.base import NOT_TEST, Store

SRM_ALERT = 0.01
"""An SRM p-value below this means the split is not the configured one: read no lift."""

_VALUE = {
    "duckdb": "TRY_CAST(e.properties ->> $prop AS DOUBLE)",
    "postgres": "CASE WHEN jsonb_typeof(e.properties -> $prop) = 'number' "
    "THEN (e.properties ->> $prop)::double precision END",
}

# First entry per profile in the period; its conversions within the window; per-arm sums.
_ARMS = f"""
WITH entries AS (
  SELECT DISTINCT ON (profile_id) profile_id, holdout, entered_at FROM memberships
  WHERE kind = 'audience' AND name = $audience AND entered_at >= $since
    AND entered_at <= $until AND {NOT_TEST}
  ORDER BY profile_id, entered_at
), per_profile AS (
  SELECT n.profile_id, n.holdout, count(e.message_id) AS conversions,
         coalesce(sum({{value}}), 0) AS revenue
  FROM entries n LEFT JOIN profile_events e
    ON e.canonical_profile_id = n.profile_id AND e.type = 'track' AND e.event = $event
   AND e."timestamp" >= n.entered_at
   AND e."timestamp" < n.entered_at + INTERVAL '{{window}} seconds'
  GROUP BY n.profile_id, n.holdout
)
SELECT holdout, count(*), count(*) FILTER (WHERE conversions > 0),
       coalesce(sum(revenue), 0), coalesce(sum(revenue * revenue), 0)
FROM per_profile GROUP BY holdout"""


@dataclass(frozen=True)
class Arm:
    """One arm's entrants, converters and the revenue of their conversions."""

    profiles: int = 0
    converted: int = 0
    revenue: float = 0.0
    revenue_squares: float = 0.0


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

    @property
    def srm_alert(self) -> bool:
        """The observed split is unlikely under the configured holdout share."""
        return self.srm_p_value is not None and self.srm_p_value < SRM_ALERT


@dataclass(frozen=True)
class Report:
    """Every audience with a holdout over one period."""

    since: datetime
    until: datetime
    window: str
    conversion_event: str
    value_property: str | None
    audiences: tuple[AudienceReport, ...]


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


def report(
    store: Store,
    project: Project,
    segments: SegmentProject,
    since: datetime,
    until: datetime,
    audience: str | None = None,
) -> Report:
    """Lift of each audience with a holdout (or of `audience`) for entries in [since, until]."""
    if audience is not None and audience not in segments.audiences:
        raise NotFoundError(f"no audience named {audience!r} — see the audiences: section")
    event, prop = conversion_of(project)
    names = [audience] if audience else sorted(segments.audiences)
    chosen = [segments.audiences[n] for n in names if segments.audiences[n].holdout_percent]
    found = []
    with store.sql.reading() as tx:
        for one in chosen:
            rows = tx.run(
                _ARMS,
                {
                    "audience": one.name,
                    "since": since,
                    "until": until,
                    "event": event,
                    "prop": prop or "",
                },
                value=_VALUE[tx.dialect] if prop else "NULL",
                window=str(project.report.window_seconds()),
            )
            arms = {bool(r[0]): Arm(int(r[1]), int(r[2]), float(r[3]), float(r[4])) for r in rows}
            found.append(_audience(one.name, one.holdout_percent or 0.0, arms))
    return Report(since, until, project.report.window, event, prop, tuple(found))


def _audience(name: str, percent: float, arms: dict[bool, Arm]) -> AudienceReport:
    treatment, holdout = arms.get(False, Arm()), arms.get(True, Arm())
    n_t, n_c = treatment.profiles, holdout.profiles
    if n_t == 0 or n_c == 0:
        srm = srm_p_value(n_t, n_c, percent / 100) if n_t + n_c else None
        return AudienceReport(name, percent, treatment, holdout, None, srm, None, None, None)
    found = lift(treatment.converted, n_t, holdout.converted, n_c)
    revenue = _incremental_revenue(treatment, holdout)
    srm = srm_p_value(n_t, n_c, percent / 100)
    return AudienceReport(name, percent, treatment, holdout, found, srm, *revenue)


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
