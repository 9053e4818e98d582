"""
Real sockets on 127.0.0.1 in the test's own process: a hub (and its
workers) running in the test's reactor on ephemeral loopback ports, and a
plain listening socket read without the reactor.

Tests built on these are C{net} tests.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.protocols.policies import WrappingFactory

from pothead.hub.service import Hub
from pothead.worker.service import worker_service
from tests.harness import wait_for


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
    interface: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://{self.interface}:{self.consumer_port}"

    @property
    def worker_endpoint(self) -> str:
        return f"tcp:{self.interface}:{self.worker_port}"

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
        service = worker_service(reactor, app, [self.worker_endpoint], slots, **kwargs)
        joined = kwargs.get("pool", "default")
        pool = self.hub.pools[joined if isinstance(joined, str) else joined[0]]
        expected = pool.idle + slots
        service.startService()
        self._workers.append(service)
        await wait_for(lambda: pool.idle >= expected, what=f"{slots} slots to attach")
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


async def start_hub(interface: str = "127.0.0.1", port: int = 0, **kwargs) -> RunningHub:
    """
    A hub on a loopback C{interface} with an ephemeral consumer port and
    the worker port C{port} (ephemeral if 0); C{kwargs} go to L{Hub}.
    """
    hub = Hub(reactor, **kwargs)
    consumer = WrappingFactory(hub.consumer_factory())
    workers = WrappingFactory(hub.worker_factory())
    consumer_port = await serverFromString(reactor, f"tcp:0:interface={interface}").listen(consumer)
    worker_port = await serverFromString(reactor, f"tcp:{port}:interface={interface}").listen(workers)
    return RunningHub(
        hub,
        consumer_port.getHost().port,
        worker_port.getHost().port,
        [consumer_port, worker_port],
        [consumer, workers],
        interface=interface,
    )


class Raw:
    """
    A plain listening socket, read without the reactor.
    """

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.peer: socket.socket | None = None

    def accept(self) -> socket.socket:
        self.listener.settimeout(5)
        self.peer, _ = self.listener.accept()
        self.peer.settimeout(5)
        return self.peer

    def close(self) -> None:
        if self.peer is not None:
            self.peer.close()
        self.listener.close()


def received_without_reactor(peer: socket.socket, timeout: float) -> bytes:
    """
    What C{peer} receives within C{timeout} seconds while the reactor
    does not turn (the caller holds it); C{b""} if nothing.
    """
    peer.settimeout(timeout)
    try:
        return peer.recv(65536)
    except TimeoutError:
        return b""
