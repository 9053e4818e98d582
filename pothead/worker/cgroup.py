"""
The CPU quota a container gives this process, from its cgroup.

Kubernetes and systemd cap CPU with the CFS bandwidth controller
(https://docs.kernel.org/scheduler/sched-bwc.html); the quota, in CPUs, is
quota / period.  cgroup v2 keeps both in ``cpu.max`` ("max 100000" when
unlimited); v1 in ``cpu.cfs_quota_us`` (-1 when unlimited) and
``cpu.cfs_period_us``.
"""

from __future__ import annotations

from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cpu_quota(root: Path = CGROUP_ROOT) -> float | None:
    """
    The CPU quota in CPUs, or L{None} when there is none (or no cgroup
    file says).

    :param root: where the cgroup filesystem is mounted.
    """
    v2 = root / "cpu.max"
    if v2.exists():
        quota, _, period = v2.read_text().strip().partition(" ")
        if quota == "max":
            return None
        return int(quota) / int(period or 100000)
    for v1 in (root / "cpu", root / "cpu,cpuacct"):
        quota_file, period_file = v1 / "cpu.cfs_quota_us", v1 / "cpu.cfs_period_us"
        if quota_file.exists() and period_file.exists():
            quota = int(quota_file.read_text())
            if quota <= 0:
                return None
            return quota / int(period_file.read_text())
    return None
