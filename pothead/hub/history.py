"""
The last fifteen minutes of each pool's queue, for the status page: every
few seconds, the most jobs that waited at once and the median and 95th
percentile of the queue waits that ended.

Prometheus keeps history for whoever scrapes it; the status page must show
it to whoever opens it, with nothing else running.  Waits are gathered by
the pool's metrics (L{PoolMetrics.recent_waits}) only while a history is
kept, which is only while the admin port is on.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Mapping

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from pothead.hub.pool import Pool

#: Seconds between two points of the history.
INTERVAL = 5.0

#: Seconds of history kept.
SPAN = 15 * 60.0


def percentile(ordered: list[float], fraction: float) -> float | None:
    """
    The nearest-rank percentile of C{ordered} (sorted), or L{None} if empty.
    """
    if not ordered:
        return None
    return ordered[max(1, math.ceil(len(ordered) * fraction)) - 1]


class PoolHistory:
    """
    One pool's points, oldest first, at most L{SPAN} long.
    """

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self.points: deque[dict] = deque(maxlen=int(SPAN / INTERVAL))
        pool.metrics.recent_waits = []
        pool.metrics.queued_peak = pool.queued

    def sample(self, now: float) -> None:
        """
        End the interval at C{now}: add its point, and start the next.
        """
        metrics = self._pool.metrics
        waits, metrics.recent_waits = metrics.recent_waits, []
        waits.sort()
        queued = self._pool.queued
        peak, metrics.queued_peak = max(metrics.queued_peak, queued), queued
        self.points.append({
            "time": round(now, 3),
            "queued_max": peak,
            "waits": len(waits),
            "wait_p50_seconds": _rounded(percentile(waits, 0.5)),
            "wait_p95_seconds": _rounded(percentile(waits, 0.95)),
        })

    def stop(self) -> None:
        """Gather no more waits."""
        self._pool.metrics.recent_waits = None


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 4)


class History(Service):
    """
    Every pool's history, sampled every L{INTERVAL} seconds while running.

    :ivar pools: each pool's history, by name.
    """

    def __init__(self, pools: Mapping[str, Pool], clock: IReactorTime) -> None:
        self._all = pools
        self._clock = clock
        self.pools: dict[str, PoolHistory] = {}
        self._sampling = LoopingCall(self._sample)
        self._sampling.clock = clock

    def startService(self) -> None:
        super().startService()
        self.pools = {name: PoolHistory(pool) for name, pool in self._all.items()}
        self._sampling.start(INTERVAL, now=False)

    def stopService(self) -> None:
        super().stopService()
        self._sampling.stop()
        for history in self.pools.values():
            history.stop()

    def _sample(self) -> None:
        now = self._clock.seconds()
        for history in self.pools.values():
            history.sample(now)

    def of(self, name: str) -> dict:
        """What C{/status.json} says of C{name}'s history."""
        history = self.pools.get(name)
        return {
            "interval_seconds": INTERVAL,
            "points": list(history.points) if history is not None else [],
        }
