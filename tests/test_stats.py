import math
import statistics

import pytest

from moslora_diffusion.yardstick.stats import format_mean_ci, mean_ci95, t_critical_975


def test_mean_ci_matches_hand_computation():
    vals = [0.8, 0.9, 0.85, 0.95, 0.7]
    mean, half = mean_ci95(vals)
    sd = math.sqrt(sum((v - 0.84) ** 2 for v in vals) / 4)
    assert mean == pytest.approx(0.84)
    assert half == pytest.approx(2.776 * sd / math.sqrt(5))
    assert format_mean_ci(vals) == f"84.0 ± {100 * half:.1f}"


def test_t_quantiles_approach_normal():
    assert t_critical_975(1) == pytest.approx(12.706)
    assert t_critical_975(1000) == pytest.approx(statistics.NormalDist().inv_cdf(0.975), abs=1e-3)
    assert math.isnan(mean_ci95([0.5])[1])
    with pytest.raises(ValueError):
        mean_ci95([])


def test_a_mean_that_rounds_to_zero_has_no_minus_sign():
    assert format_mean_ci([-1e-4, 1e-4, -2e-4]).startswith("0.0 ± ")
    assert format_mean_ci([-0.004, -0.006]) == "-0.5 ± 1.3"
