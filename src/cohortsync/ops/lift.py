"""Holdout lift statistics: Newcombe interval, log risk ratio, z-test, SRM and MDE.

scipy and statsmodels are imported where they are used: loading them takes most of a second,
which every other command and `serve` would otherwise pay at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass

ALPHA = 0.05
POWER = 0.8


@dataclass(frozen=True)
class Lift:
    """Treatment vs holdout figures; None where the data cannot define one."""

    rate_treatment: float
    rate_holdout: float
    lift: float
    lift_low: float
    lift_high: float
    relative: float | None
    relative_low: float | None
    relative_high: float | None
    p_value: float | None
    incremental: float
    incremental_low: float
    incremental_high: float
    mde: float | None


def diff_interval(x_t: int, n_t: int, x_c: int, n_c: int) -> tuple[float, float]:
    """95% Newcombe hybrid score interval for p_t − p_c."""
    from statsmodels.stats.proportion import confint_proportions_2indep

    low, high = confint_proportions_2indep(
        x_t, n_t, x_c, n_c, compare="diff", method="newcomb", alpha=ALPHA
    )
    return float(low), float(high)


def relative_interval(x_t: int, n_t: int, x_c: int, n_c: int) -> tuple[float, float]:
    """95% log risk-ratio (Katz) interval for p_t/p_c − 1; 0.5 added to counts when one is 0."""
    from statsmodels.stats.proportion import confint_proportions_2indep

    method = "log" if 0 < x_t < n_t and 0 < x_c < n_c else "log-adjusted"
    low, high = confint_proportions_2indep(
        x_t, n_t, x_c, n_c, compare="ratio", method=method, alpha=ALPHA
    )
    return float(low) - 1.0, float(high) - 1.0


def p_value(x_t: int, n_t: int, x_c: int, n_c: int) -> float | None:
    """Two-sided pooled two-proportion z-test; None when nobody or everybody converted."""
    if x_t + x_c in (0, n_t + n_c):
        return None
    from statsmodels.stats.proportion import proportions_ztest

    _, p = proportions_ztest([x_t, x_c], [n_t, n_c])
    return float(p)


def srm_p_value(n_t: int, n_c: int, holdout_share: float) -> float:
    """Chi-square p-value of the observed split against the configured holdout share."""
    from scipy.stats import chisquare

    total = n_t + n_c
    expected = [total * (1.0 - holdout_share), total * holdout_share]
    return float(chisquare([n_t, n_c], expected).pvalue)


def mde(n_t: int, n_c: int, baseline: float) -> float | None:
    """Smallest absolute lift detectable at 80% power, alpha 0.05; None when none is."""
    from scipy.optimize import brentq
    from statsmodels.stats.proportion import power_proportions_2indep

    top = 1.0 - baseline - 1e-9

    def gap(d: float) -> float:
        power = power_proportions_2indep(d, baseline, n_t, ratio=n_c / n_t, alpha=ALPHA).power
        return float(power) - POWER

    if top <= 1e-9 or gap(top) < 0:
        return None
    return float(brentq(gap, 1e-9, top, xtol=1e-9))


def lift(x_t: int, n_t: int, x_c: int, n_c: int) -> Lift:
    """All figures of one treatment arm against its holdout; both arms must be non-empty."""
    if n_t <= 0 or n_c <= 0:
        raise ValueError("both arms need at least one profile")
    p_t, p_c = x_t / n_t, x_c / n_c
    low, high = diff_interval(x_t, n_t, x_c, n_c)
    relative = relative_low = relative_high = None
    if x_c > 0:
        relative = p_t / p_c - 1.0
        relative_low, relative_high = relative_interval(x_t, n_t, x_c, n_c)
    d = p_t - p_c
    return Lift(
        rate_treatment=p_t,
        rate_holdout=p_c,
        lift=d,
        lift_low=low,
        lift_high=high,
        relative=relative,
        relative_low=relative_low,
        relative_high=relative_high,
        p_value=p_value(x_t, n_t, x_c, n_c),
        incremental=d * n_t,
        incremental_low=low * n_t,
        incremental_high=high * n_t,
        mde=mde(n_t, n_c, p_c),
    )
