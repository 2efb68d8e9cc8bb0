"""Sizes for people, the same in the operator's status, `maap run` and the stages' logs."""

from __future__ import annotations


def human_size(count: float) -> str:
    """1024-based: `512 B`, `100.2 KiB`, `516.5 MiB`, `2.3 GiB` (GiB is the largest unit)."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
