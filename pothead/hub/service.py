"""
The hub: the consumer factory and the worker-port factory, sharing pools.
"""

from __future__ import annotations

from dataclasses import replace

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from pothead.attach import DEFAULT_POOL
from pothead.exit import exit_cleanly
from pothead.hub.attach_server import LegacyWorkerFactory, WorkerPortFactory
from pothead.hub.connection_limit import ConnectionLimit
from pothead.hub.consumer import ConsumerFactory, consumer_factory
from pothead.hub.descriptors import ATTACH_MARGIN
from pothead.hub.limits import Limits
from pothead.hub.metrics import HubMetrics
from pothead.hub.pool import Pool
from pothead.hub.routing import PoolSpec, Router
from pothead.logs import LogFormatChoice
from pothead.tokens import TokenCheck

_log = Logger()

#: How often a stopping hub checks whether its work is done, in seconds.
_STOP_POLL = 0.05


class Hub:
    """
    The state one hub process shares between its two kinds of listener.

    :ivar pools: the pools workers may attach to, by name.
    :ivar router: which pool each consumer request goes to.
    :ivar limits: the limits and timeouts it enforces.
    :ivar consumer_connections: the limit on consumer connections, shared
        by every consumer port.
    :ivar worker_connections: the limit on worker-port connections: the
        slots it holds, and a margin for attaches it reads to refuse.
    :ivar server_timing: whether responses carry a C{Server-Timing} header.
    :ivar metrics: the counts that belong to no pool (each pool keeps its own).
    """

    def __init__(
        self,
        clock: IReactorTime,
        token: str | None = None,
        limits: Limits | None = None,
        access_log: str | None = None,
        server_timing: bool = True,
        pools: list[PoolSpec] | None = None,
    ) -> None:
        """
        :param pools: the pools and how requests are routed to them
            (L{pothead.hub.routing}); by default one, C{default}, for every
            request.
        """
        self.limits = limits or Limits()
        specs = pools or [PoolSpec(DEFAULT_POOL)]
        self.pools = {
            spec.name: Pool(spec.name, clock, replace(self.limits, **spec.limits))
            for spec in specs
        }
        self.router = Router(specs, DEFAULT_POOL if DEFAULT_POOL in self.pools else None)
        self.server_timing = server_timing
        self.metrics = HubMetrics()
        self.access_log = access_log
        self.consumer_connections = ConnectionLimit(self.limits.connections, clock, "consumer")
        self.worker_connections = ConnectionLimit(
            self.limits.max_slots + ATTACH_MARGIN, clock, "worker-port"
        )
        self._clock = clock
        self._token_check = TokenCheck(token)

    def consumer_factory(self) -> ConsumerFactory:
        """
        A factory for a consumer listener: each request goes to the pool
        the router picks for it.
        """
        return consumer_factory(
            self.router, self.pools, self._clock, self.limits, self.consumer_connections,
            self.metrics, self.access_log, self.server_timing,
        )

    def legacy_worker_factory(self) -> LegacyWorkerFactory:
        """
        A factory for a legacy-worker listener (no attach, no token): its
        workers serve the default pool, which must exist.
        """
        return LegacyWorkerFactory(self.pools[DEFAULT_POOL])

    def worker_factory(self) -> WorkerPortFactory:
        """
        A factory for a worker-port listener.
        """
        return WorkerPortFactory(
            self.pools,
            self._token_check,
            self.limits,
            self._clock,
            self.worker_connections,
            self.metrics,
        )

    @property
    def slots(self) -> set:
        """Every attached slot, once (a slot may serve several pools)."""
        return set().union(*(pool.slots for pool in self.pools.values()))

    @property
    def busy(self) -> int:
        """
        Jobs queued or being served, in all pools.
        """
        queued = sum(pool.queued for pool in self.pools.values())
        return queued + sum(1 for slot in self.slots if slot.state != "idle")

    async def finish_work(self) -> None:
        """
        Wait until no job is queued or being served, or the stop timeout
        has passed.
        """
        deadline = self._clock.seconds() + self.limits.stop_timeout
        while self.busy and self._clock.seconds() < deadline:
            await deferLater(self._clock, _STOP_POLL, lambda: None)
        if self.busy:
            _log.warn("stopping with {busy} jobs unfinished", busy=self.busy)
        else:
            exit_cleanly(self._clock)

    def detach_all(self) -> None:
        """
        Close every worker connection; idle slots lose nothing by it.
        """
        for slot in self.slots:
            slot.detach()


class HubService(LogFormatChoice, MultiService):
    """
    A hub's listeners, stopped in the order that loses no request: first
    stop accepting consumers, then let queued and in-flight jobs finish
    (up to the stop timeout), then let the workers go.

    :ivar consumers: the consumer listeners.
    :ivar workers: the worker-port listeners.
    """

    def __init__(self, hub: Hub) -> None:
        super().__init__()
        self.hub = hub
        self.consumers = MultiService()
        self.workers = MultiService()
        self.consumers.setServiceParent(self)
        self.workers.setServiceParent(self)

    async def _stop(self) -> None:
        Service.stopService(self)
        await self.consumers.stopService()
        await self.hub.finish_work()
        self.hub.detach_all()
        await self.workers.stopService()

    def stopService(self) -> Deferred[None]:
        _log.info("hub stopping: no new consumers; finishing {busy} jobs", busy=self.hub.busy)
        return Deferred.fromCoroutine(self._stop())
