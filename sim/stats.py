"""Statistics that survive review: percentiles with their n, thin tails marked, ratios with intervals.

Storage is the HDR histogram (``hdrhistogram``; 3 significant digits), never raw samples,
and percentiles are never averaged: every figure here is computed from one histogram
(or one merge of histograms) at a time.

**How many samples a percentile needs.** A percentile is reported as such only when at
least :data:`MIN_TAIL` samples lie beyond it: P50 needs 20, P95 200, P99 1,000, P99.9
10,000. Below that it is essentially the largest sample, so it is shown as
``max of n`` (the maximum, labelled), :func:`undersampled` names it, and the budget
check refuses to judge it (``sim/budgets.py``).

**Interval of one percentile: order statistics.** The q-quantile of n samples lies
between the order statistics of ranks ``binom.ppf(0.025, n, q)`` and
``binom.ppf(0.975, n, q) + 1`` with at least 95% probability, whatever the distribution
(``scipy.stats.binom``). Exact, distribution-free, and read straight off the histogram.

**Interval of a ratio between architectures: bootstrap.** Two independent samples
(phases of different architectures), the ratio of a percentile of each: no closed form,
so a percentile bootstrap (2,000 resamples, seeded). The bootstrap replicate of a
percentile is the k-th smallest of n values drawn with replacement from the histogram,
and its distribution is known exactly: ``P(X(k) <= v) = P(Binomial(n, F(v)) >= k)``
with F the histogram's CDF (``scipy.stats.binom``). Replicates are drawn from that by
inverse transform, so no resample is materialised: the same bootstrap as
``scipy.stats.bootstrap(..., method="percentile")`` on the raw samples
(tests/sim/test_stats.py checks the two agree), at O(distinct values) per percentile,
cheap enough for every (architecture, operation, percentile) of a run, and computable
again later from the committed histograms alone. A ratio is only given where both
percentiles are resolved.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
from hdrh.histogram import HdrHistogram
from scipy.stats import binom

#: Percentiles every table shows (P99.9 only where 10,000 samples back it).
PERCENTILES = (50.0, 95.0, 99.0, 99.9)
#: Samples that must lie beyond a percentile for it to be reported as that percentile.
MIN_TAIL = 10
CONFIDENCE = 0.95
RESAMPLES = 2000


def key(q: float) -> str:
    """``p50``, ``p95``, ``p99``, ``p99.9``."""
    return f"p{q:g}"


def min_samples(q: float) -> int:
    """Samples needed to report the ``q`` percentile: 20 for P50, 1,000 for P99, 10,000 for P99.9."""
    return math.ceil(round(MIN_TAIL / (1.0 - q / 100.0), 6))


def resolved(n: int, q: float) -> bool:
    """True if ``n`` samples are enough to report the ``q`` percentile."""
    return n >= min_samples(q)


def undersampled(n: int, percentiles: tuple[float, ...] = PERCENTILES) -> list[str]:
    """Keys (``p99``, ...) of the percentiles ``n`` samples cannot back: shown as ``max of n``."""
    return [key(q) for q in percentiles if not resolved(n, q)]


def summarize(hist: HdrHistogram) -> dict[str, Any]:
    """``count``, ``p50_us`` .. ``p99.9_us``, ``max_us`` and which percentiles are ``undersampled``."""
    n = hist.get_total_count()
    out: dict[str, Any] = {"count": n}
    for q in PERCENTILES:
        out[f"{key(q)}_us"] = hist.get_value_at_percentile(q) if n else 0
    out["max_us"] = hist.get_max_value() if n else 0
    out["undersampled"] = undersampled(n)
    return out


def summarize_samples(samples_us: np.ndarray) -> dict[str, Any]:
    """:func:`summarize` for exact samples (the probe keeps every sample)."""
    n = int(samples_us.size)
    out: dict[str, Any] = {"count": n}
    values = np.percentile(samples_us, PERCENTILES) if n else [0.0] * len(PERCENTILES)
    for q, v in zip(PERCENTILES, values, strict=True):
        out[f"{key(q)}_us"] = round(float(v), 2)
    out["max_us"] = round(float(samples_us.max()), 2) if n else 0.0
    out["undersampled"] = undersampled(n)
    return out


def show(stats: dict[str, Any], q: float, fmt=lambda us: f"{us / 1000:.3f}") -> str:
    """A table cell: the percentile, or ``max of n: X`` when ``n`` cannot back it."""
    n = stats.get("count", 0)
    value = stats.get(f"{key(q)}_us")
    if not n or value is None:  # nothing recorded, or a result written before this percentile was kept
        return "-"
    if key(q) in stats.get("undersampled", undersampled(n)):
        return f"max of {n:,}: {fmt(stats['max_us'])}"
    return fmt(value)


# ------------------------------------------------------------------ intervals
def _value_at_rank(hist: HdrHistogram, rank: int) -> float:
    """The ``rank``-th smallest recorded value (1-based)."""
    n = hist.get_total_count()
    return float(hist.get_value_at_percentile(100.0 * min(max(rank, 1), n) / n))


def percentile_interval(
    hist: HdrHistogram, q: float, confidence: float = CONFIDENCE
) -> tuple[float, float] | None:
    """Distribution-free interval of the ``q`` percentile from order statistics; None if undersampled."""
    n = hist.get_total_count()
    if not resolved(n, q):
        return None
    alpha = 1.0 - confidence
    low = int(binom.ppf(alpha / 2, n, q / 100.0))
    high = int(binom.ppf(1 - alpha / 2, n, q / 100.0)) + 1
    if high > n:
        return None
    return _value_at_rank(hist, max(low, 1)), _value_at_rank(hist, high)


@functools.lru_cache(maxsize=64)
def _support(hist: HdrHistogram) -> tuple[np.ndarray, np.ndarray]:
    # Cached per histogram object: walking HDR's buckets is the slow part, and a report asks
    # for several percentiles of the same histogram. Histograms are not changed once written.
    values, counts = [], []
    for item in hist.get_recorded_iterator():
        values.append(item.value_iterated_to)
        counts.append(item.count_at_value_iterated_to)
    return np.asarray(values, dtype=np.float64), np.asarray(counts, dtype=np.int64)


def bootstrap_percentile(
    hist: HdrHistogram, q: float, *, resamples: int = RESAMPLES, rng: np.random.Generator
) -> np.ndarray:
    """``resamples`` bootstrap replicates of the ``q`` percentile of ``hist`` (see the module docstring)."""
    values, counts = _support(hist)
    n = int(counts.sum())
    rank = max(1, math.ceil(q / 100.0 * n))
    cdf = np.cumsum(counts) / n
    # P(the rank-th smallest of n draws is <= values[j]) = P(Binomial(n, cdf[j]) >= rank).
    order_cdf = binom.sf(rank - 1, n, cdf)
    order_cdf[-1] = 1.0
    idx = np.searchsorted(order_cdf, rng.random(resamples), side="left")
    return values[np.minimum(idx, values.size - 1)]


def ratio_interval(
    num: HdrHistogram,
    den: HdrHistogram,
    q: float,
    *,
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> dict[str, Any] | None:
    """``num``'s ``q`` percentile over ``den``'s, with a bootstrap interval; None if either is thin."""
    n_num, n_den = num.get_total_count(), den.get_total_count()
    if not (resolved(n_num, q) and resolved(n_den, q)):
        return None
    rng = np.random.default_rng(seed)
    a = bootstrap_percentile(num, q, resamples=resamples, rng=rng)
    b = bootstrap_percentile(den, q, resamples=resamples, rng=rng)
    ratios = a / np.maximum(b, 1.0)
    alpha = 1.0 - confidence
    low, high = np.quantile(ratios, [alpha / 2, 1 - alpha / 2])
    point = num.get_value_at_percentile(q) / max(den.get_value_at_percentile(q), 1)
    return {
        "ratio": round(float(point), 4),
        "low": round(float(low), 4),
        "high": round(float(high), 4),
        "n": [n_num, n_den],
        "confidence": confidence,
        "method": f"percentile bootstrap, {resamples} resamples of each histogram",
    }


def show_ratio(r: dict[str, Any] | None) -> str:
    """``12.3x [11.8, 12.9]``, or ``-`` where the ratio is not backed."""
    if not r:
        return "-"

    def num(x: float) -> str:
        return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"

    return f"{num(r['ratio'])}x [{num(r['low'])}, {num(r['high'])}]"
