"""How many CPUs this process may really use: its affinity, capped by a cgroup CPU quota.

ONNX Runtime GenAI, left to itself, ran one intra-op thread on the 2-core development
machine (51 decoded tokens/s on SmolLM2 int4; two threads: 84). So every model load here
says how many threads to use. A pod's CPU limit is a cgroup quota, not an affinity mask:
on a 16-core node, a pod limited to 2 CPUs sees 16 in its affinity, and 16 threads would
fight over 2 CPUs' worth of time.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_V2_MAX = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def _quota_cpus() -> float | None:
    """CPUs' worth of time the cgroup allows (None: no quota, or none readable)."""
    try:
        quota, period = CGROUP_V2_MAX.read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int(CGROUP_V1_QUOTA.read_text())
        period_us = int(CGROUP_V1_PERIOD.read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def usable_cpus() -> int:
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    quota = _quota_cpus()
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)
