"""Small statistics helpers (no numpy: the harness uses only what Chorus already installs)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def percentile(values: Sequence[float], pct: float) -> float | None:
    """The ``pct`` percentile with linear interpolation between ranks; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    rank = (len(ordered) - 1) * pct / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    frac = rank - low
    return float(ordered[low] + (ordered[high] - ordered[low]) * frac)


def median_item(items: Sequence[T], key: Callable[[T], float]) -> T:
    """The item whose ``key`` is the median (the upper one of an even count)."""
    return sorted(items, key=key)[len(items) // 2]


def mean(values: Sequence[float]) -> float | None:
    return float(sum(values) / len(values)) if values else None


def describe(values: Sequence[float]) -> dict[str, float | int | None]:
    """count, mean, p50, p99, min and max of ``values``."""
    return {
        "count": len(values),
        "mean": mean(values),
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "min": float(min(values)) if values else None,
        "max": float(max(values)) if values else None,
    }


def fmt(value: float | int | None, digits: int = 2, unit: str = "") -> str:
    """A number for a table cell; an em dash for a missing one."""
    if value is None:
        return "—"
    if isinstance(value, int):
        return f"{value:,}{unit}"
    return f"{value:,.{digits}f}{unit}"
