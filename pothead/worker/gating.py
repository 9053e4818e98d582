"""
POTHEAD 0.4.3's ready-made ``wait_for_slot`` gates, for apps written
against it::

    from pothead.gating import wait_for_idle_cpus
    app.wait_for_slot = wait_for_idle_cpus(2)

run with ``--poll-jobs``.  New deployments can say ``--admission cpu:2``
instead, with no change to the app.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from pothead.worker.admission import CpuAdmission

__all__ = ["wait_for_idle_cpus"]

#: How often the blocking gate re-reads the CPU, in seconds.
_POLL = 0.1


class _MonotonicClock:
    """
    The little of IReactorTime that CPU readings need, for a gate that
    runs in a plain thread rather than on the reactor.
    """

    def seconds(self) -> float:
        return time.monotonic()


def wait_for_idle_cpus(
    required: float,
    *,
    max_concurrent: int | None = None,
    fixed_delay: float = 0.2,
    inertia: float = 0.7,
) -> Callable[[Callable[[], bool]], Any]:
    """
    A ``wait_for_slot(halt)`` that lets one job through at any time, and
    more while C{required} CPUs are idle and the process stays under its
    cgroup CPU quota, as in POTHEAD 0.4.3.

    :param required: idle CPUs needed for one more concurrent job.
    :param max_concurrent: jobs at most (default as in 0.4.3: twice the
        CPUs, or the cgroup quota, over C{required}).
    :param fixed_delay: seconds to wait before each admission.
    :param inertia: smoothing of the CPU readings, from 0 to 1.
    """
    gate = CpuAdmission(
        required, _MonotonicClock(), max_slots=max_concurrent, inertia=inertia
    )

    def wait_for_slot(halt: Callable[[], bool]) -> Any:
        time.sleep(fixed_delay)
        while not halt():
            ticket = gate.try_admit()
            if ticket is not None:
                return ticket
            time.sleep(_POLL)
        return None

    return wait_for_slot
