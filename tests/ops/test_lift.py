"""Lift statistics: the reference test vector, and generated data with a known true lift."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import chisquare
from scipy.stats.contingency import relative_risk
from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest

from cohortsync.ops.lift import lift, mde, srm_p_value


def test_reference_vector() -> None:
    result = lift(120, 1000, 90, 1000)
    assert round(result.lift, 6) == 0.03
    assert round(result.lift_low, 6) == 0.003096
    assert round(result.lift_high, 6) == 0.057010
    assert round(result.p_value or 0, 5) == 0.02865
    assert round(result.relative_low or 0, 3) == 0.029
    assert round(result.relative_high or 0, 3) == 0.727
    assert round(result.incremental_low, 4) == round(0.0030960486785798 * 1000, 4)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_generated_data_covers_true_lift_and_matches_libraries(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_t, n_c, p_c, true_lift = 20000, 5000, 0.08, 0.02
    x_t = int(rng.binomial(1, p_c + true_lift, n_t).sum())
    x_c = int(rng.binomial(1, p_c, n_c).sum())
    result = lift(x_t, n_t, x_c, n_c)
    assert result.lift_low <= true_lift <= result.lift_high
    low, high = confint_proportions_2indep(x_t, n_t, x_c, n_c, compare="diff", method="newcomb")
    assert (result.lift_low, result.lift_high) == pytest.approx((low, high), abs=1e-12)
    rr = relative_risk(x_t, n_t, x_c, n_c).confidence_interval(0.95)
    assert result.relative_low == pytest.approx(rr.low - 1, abs=1e-12)
    assert result.relative_high == pytest.approx(rr.high - 1, abs=1e-12)
    assert result.p_value == pytest.approx(proportions_ztest([x_t, x_c], [n_t, n_c])[1])
    assert result.incremental == pytest.approx((x_t / n_t - x_c / n_c) * n_t)
    assert result.mde is not None and 0 < result.mde < true_lift


def test_srm_against_configured_share() -> None:
    assert srm_p_value(900, 100, 0.1) == pytest.approx(1.0)
    expected = chisquare([800, 200], [900, 100]).pvalue
    assert srm_p_value(800, 200, 0.1) == pytest.approx(expected)
    assert srm_p_value(800, 200, 0.1) < 0.01


def test_mde_matches_reference_sample_size() -> None:
    # The reference: 9% -> 10.8% needs 4,321 per arm at 50/50 with 80% power.
    assert mde(4321, 4321, 0.09) == pytest.approx(0.018, abs=2e-4)
    assert mde(100, 100, 0.09) > mde(10000, 10000, 0.09)  # type: ignore[operator]


def test_zero_conversions_leave_relative_lift_undefined() -> None:
    result = lift(0, 50, 0, 10)
    assert result.relative is None and result.p_value is None
    with pytest.raises(ValueError):
        lift(1, 10, 0, 0)
