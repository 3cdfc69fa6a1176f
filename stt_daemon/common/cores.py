"""How many CPU cores this process may really use (containers included).

``os.cpu_count()`` answers for the whole host: in a container limited to two
cores on a 64-core node it says 64, and a daemon sized from it would run 32 jobs
on two cores. The affinity mask (cpusets) and the cgroup's CPU quota say more.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max <period>"


def quota_cores(cpu_max: Path = CPU_MAX) -> int | None:
    """Cores allowed by the cgroup v2 CPU quota, rounded up; None when unlimited or unknown."""
    try:
        quota, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return max(1, math.ceil(int(quota) / int(period)))
    except (ValueError, ZeroDivisionError):
        return None


def usable_cores() -> int:
    """The fewest of: the host's cores, the affinity mask, the cgroup quota."""
    counts = [os.cpu_count() or 1]
    if hasattr(os, "sched_getaffinity"):
        counts.append(len(os.sched_getaffinity(0)))
    if (quota := quota_cores()) is not None:
        counts.append(quota)
    return max(1, min(counts))
