"""
Shared fixtures: a hub and a worker running in the test's reactor on
127.0.0.1, and a check that no test leaves timers behind.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import deferLater
from twisted.protocols.policies import WrappingFactory

from pothead.hub.service import Hub
from pothead.worker.service import worker_service

#: Upper bound for any wait on the network in a test, in seconds.
WAIT = 10.0


async def wait_for(condition, timeout: float = WAIT, what: str = "condition") -> None:
    """
    Poll C{condition} every 10 ms until it is true; fail after C{timeout}.
    """
    deadline = reactor.seconds() + timeout
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await deferLater(reactor, 0.01, lambda: None)


@dataclass
class RunningHub:
    """
    A hub listening on two ephemeral loopback ports, plus its workers.
    """

    hub: Hub
    consumer_port: int
    worker_port: int
    _ports: list = field(default_factory=list)
    _factories: list = field(default_factory=list)
    _workers: list = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.consumer_port}"

    @property
    def worker_endpoint(self) -> str:
        return f"tcp:127.0.0.1:{self.worker_port}"

    @property
    def pool(self):
        return self.hub.pools["default"]

    def consumer_transports(self) -> list:
        """The transports of the consumer connections open now."""
        return [wrapper.transport for wrapper in self._factories[0].protocols]

    async def add_worker(self, app, slots: int = 1, **kwargs):
        """
        Start a worker in this reactor and wait until all its slots are
        idle on the hub.
        """
        service = worker_service(reactor, app, self.worker_endpoint, slots, **kwargs)
        expected = self.pool.idle + slots
        service.startService()
        self._workers.append(service)
        await wait_for(lambda: self.pool.idle >= expected, what=f"{slots} slots to attach")
        return service

    async def stop(self) -> None:
        for service in self._workers:
            await service.stopService()
        for port in self._ports:
            await port.stopListening()
        await wait_for(
            lambda: all(not f.protocols for f in self._factories),
            what="hub connections to close",
        )


async def start_hub(**kwargs) -> RunningHub:
    """
    A hub on 127.0.0.1 with ephemeral ports; C{kwargs} go to L{Hub}.
    """
    hub = Hub(reactor, **kwargs)
    consumer = WrappingFactory(hub.consumer_factory())
    workers = WrappingFactory(hub.worker_factory())
    consumer_port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(consumer)
    worker_port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(workers)
    return RunningHub(
        hub,
        consumer_port.getHost().port,
        worker_port.getHost().port,
        [consumer_port, worker_port],
        [consumer, workers],
    )


@pytest_twisted.async_yield_fixture
async def running_hub():
    """
    A hub with no workers yet; stopped, with its connections closed, after
    the test.
    """
    running = await start_hub()
    yield running
    await running.stop()


@pytest.fixture(autouse=True)
def no_leftover_timers():
    """
    Fail a test that leaves delayed calls behind in the global reactor:
    a leaked timer is a leaked connection or a missed cancel.
    """
    before = set(reactor.getDelayedCalls())
    yield
    leftover = [
        call for call in reactor.getDelayedCalls() if call not in before and call.active()
    ]
    assert not leftover, f"test left delayed calls behind: {leftover}"
