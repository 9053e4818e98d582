"""
The in-memory harness: a hub on a fake clock whose connections are
StringTransports, what its answers say, a thread pool that runs a WSGI
app at once, and a bounded wait on the test's reactor.

Nothing here opens a socket; tests built on it alone are C{unit} tests.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock, StringTransport

from pothead.attach import attach_request
from pothead.hub.limits import Limits
from pothead.hub.service import Hub

#: Upper bound for any wait on the reactor (or the network) in a test, in seconds.
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


class HubHarness:
    """
    A hub on a fake clock whose connections are StringTransports.
    """

    def __init__(self, server_timing: bool = True, pools=None, **limits) -> None:
        self.clock = MemoryReactorClock()
        self.hub = Hub(self.clock, limits=Limits(**limits), server_timing=server_timing,
                       pools=pools)
        self.site = self.hub.consumer_factory()
        self.workers = self.hub.worker_factory()
        self.pool = self.hub.pools.get("default")

    def consumer(self, data: bytes = b""):
        channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 0))
        transport = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8080),
            peerAddress=IPv4Address("TCP", "127.0.0.5", 5000),
        )
        channel.makeConnection(transport)
        if data:
            channel.dataReceived(data)
        return channel, transport

    def worker(self, pool="default", keep_sent: bool = False):
        """
        A worker slot attached to C{pool} (or several): its protocol and
        transport, whose 101 is cleared, and with it what the slot was
        sent at once unless C{keep_sent}; a refusal is kept whole.
        """
        protocol = self.workers.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.9", 6000))
        protocol.makeConnection(transport)
        protocol.dataReceived(attach_request("hub", pool, None, "w"))
        answer = transport.value()
        if answer.startswith(b"HTTP/1.1 101 "):
            transport.clear()
            if keep_sent:
                transport.io.write(answer.partition(b"\r\n\r\n")[2])
        return protocol, transport


def status(transport) -> bytes:
    """The status line of what was written to C{transport}."""
    return transport.value().split(b"\r\n", 1)[0]


def header(transport, name: bytes) -> bytes | None:
    """The value of header C{name} in the first head written to C{transport}."""
    head = transport.value().split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b": ")
        if key.lower() == name.lower():
            return value
    return None


GET = b"GET /job HTTP/1.1\r\nHost: hub\r\n\r\n"


class InThisThread:
    """
    A thread pool and a reactor's C{callFromThread} that both run what
    they are given at once, so that a WSGI app answers synchronously.
    """

    def callInThread(self, f, *args, **kwargs):
        f(*args, **kwargs)

    callFromThread = callInThread
