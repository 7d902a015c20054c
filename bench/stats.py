"""Medians and percentiles: the only statistics the benches report."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def median(values: Sequence[float]) -> float:
    if not values:
        return math.nan
    return float(statistics.median(values))


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100) of unsorted values; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return float(ordered[rank - 1])


def rate_between(timeline: Sequence[tuple[float, int]], total: int, lo: float = 0.1, hi: float = 0.9) -> float:
    """Messages per second while the count went from `lo` to `hi` of `total`.

    `timeline` is (time s, cumulative count) samples. Using the middle of the run leaves out
    start-up and the tail, so this is the sustained rate, comparable across systems.
    """
    if total <= 0 or len(timeline) < 2:
        return 0.0
    lo_count, hi_count = lo * total, hi * total
    t_lo = next(((t, c) for t, c in timeline if c >= lo_count), None)
    t_hi = next(((t, c) for t, c in timeline if c >= hi_count), None)
    if t_lo is None or t_hi is None or t_hi[0] <= t_lo[0]:
        # Too few samples in between (a very fast run): fall back to first to last.
        first, last = timeline[0], timeline[-1]
        span = last[0] - first[0]
        return (last[1] - first[1]) / span if span > 0 else 0.0
    return (t_hi[1] - t_lo[1]) / (t_hi[0] - t_lo[0])
