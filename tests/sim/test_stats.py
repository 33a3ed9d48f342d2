"""Statistics that survive review (sim/stats.py): thin tails marked, intervals that cover.

The interval checks are checked themselves: an interval built wrongly (too narrow) is
shown to miss the truth far more often than 5% of the time.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import bootstrap

from lockless import new_histogram
from sim import stats


def _hist(values) -> object:
    h = new_histogram()
    for v in values:
        h.record_value(max(1, int(v)))
    return h


def test_samples_needed_per_percentile() -> None:
    assert [stats.min_samples(q) for q in (50, 95, 99, 99.9)] == [20, 200, 1000, 10000]
    assert stats.undersampled(999) == ["p99", "p99.9"]
    assert stats.undersampled(1000) == ["p99.9"]
    assert stats.undersampled(10_000) == []


def test_a_thin_tail_is_shown_as_the_maximum_of_n() -> None:
    s = stats.summarize(_hist(range(1, 501)))
    assert s["count"] == 500 and s["undersampled"] == ["p99", "p99.9"]
    assert stats.show(s, 99, lambda us: f"{us:g}") == "max of 500: 500"
    assert stats.show(s, 50, lambda us: f"{us:g}") == "250"


def test_order_statistic_interval_covers_the_true_percentile_about_95_percent() -> None:
    rng = np.random.default_rng(7)
    truth = float(np.exp(6 + 0.5 * 2.3263))  # P99 of lognormal(6, 0.5)
    hits = narrow_hits = 0
    trials = 120
    for _ in range(trials):
        h = _hist(rng.lognormal(6, 0.5, 2000))
        low, high = stats.percentile_interval(h, 99)
        hits += low <= truth * 1.002 and truth <= high * 1.002  # HDR keeps 3 significant digits
        # A deliberately broken interval (the middle 20% of the right one) must miss often.
        mid, half = (low + high) / 2, (high - low) / 10
        narrow_hits += mid - half <= truth <= mid + half
    assert hits / trials >= 0.88
    assert narrow_hits / trials < 0.6


def test_undersampled_percentiles_get_no_interval_and_no_ratio() -> None:
    small, large = _hist(range(1, 300)), _hist(range(1, 3000))
    assert stats.percentile_interval(small, 99) is None
    assert stats.ratio_interval(large, small, 99) is None
    assert stats.ratio_interval(large, small, 50) is not None


@pytest.mark.parametrize("q", [50.0, 95.0])
def test_ratio_interval_is_the_bootstrap_scipy_computes_on_raw_samples(q: float) -> None:
    rng = np.random.default_rng(3)
    a, b = rng.lognormal(7, 0.6, 3000), rng.lognormal(6, 0.5, 2500)
    mine = stats.ratio_interval(_hist(a), _hist(b), q, seed=1)
    ref = bootstrap(
        (a, b),
        lambda x, y, axis: np.percentile(x, q, axis=axis) / np.percentile(y, q, axis=axis),
        n_resamples=2000,
        method="percentile",
        vectorized=True,
        random_state=2,
        batch=200,
    ).confidence_interval
    assert mine is not None
    assert mine["low"] == pytest.approx(ref.low, rel=0.03)
    assert mine["high"] == pytest.approx(ref.high, rel=0.03)
    assert mine["low"] <= mine["ratio"] <= mine["high"]


def test_ratio_of_identical_distributions_includes_one() -> None:
    rng = np.random.default_rng(11)
    r = stats.ratio_interval(_hist(rng.lognormal(5, 1, 4000)), _hist(rng.lognormal(5, 1, 4000)), 50)
    assert r is not None and r["low"] < 1.0 < r["high"]
    assert stats.show_ratio(r).endswith("]") and "x [" in stats.show_ratio(r)
