"""min / median / max of repeated runs, the shape every bench/ result reports."""

from __future__ import annotations

import statistics


def spread(values: list[float]) -> dict[str, float]:
    return {
        "min": round(min(values), 3),
        "median": round(statistics.median(values), 3),
        "max": round(max(values), 3),
    }
