"""Small helpers shared by the benchmark scripts."""
from __future__ import annotations


def pct(vals: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of vals; 0.0 for no values."""
    vals = sorted(vals)
    return vals[min(len(vals) - 1, int(round(p / 100 * (len(vals) - 1))))] if vals else 0.0
