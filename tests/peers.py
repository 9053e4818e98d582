"""
Hand-written peers for tests: a worker that attaches and then does what a
test tells it, and a consumer that reads only when told to.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.endpoints import clientFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater

from pothead.attach import attach_request
from tests.harness import wait_for

MIB = 1024 * 1024


class ScriptedWorker(Protocol):
    """
    A hand-written worker that attaches, then does C{on_request} with the
    first request it receives.
    """

    def __init__(self, on_request) -> None:
        self.on_request = on_request
        self.buffer = b""
        self.attached = False
        self.requests = 0

    def connectionMade(self) -> None:
        self.transport.write(attach_request("hub", "default", None, "scripted"))

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if not self.attached and b"\r\n\r\n" in self.buffer:
            _, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            self.attached = True
        if self.attached and b"\r\n\r\n" in self.buffer and not self.requests:
            self.requests += 1
            self.on_request(self.transport)


async def scripted_worker(running_hub, on_request) -> ScriptedWorker:
    worker = ScriptedWorker(on_request)
    endpoint = clientFromString(reactor, running_hub.worker_endpoint)
    expected = running_hub.pool.idle + 1
    await endpoint.connect(Factory.forProtocol(lambda: worker))
    await wait_for(lambda: running_hub.pool.idle >= expected, what="the scripted worker")
    return worker


class SlowReader(Protocol):
    """
    A consumer that sends one request and then reads only when told to.
    """

    def __init__(self) -> None:
        self.received = 0
        self.done = False

    def connectionMade(self) -> None:
        self.transport.write(b"GET /big HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n")

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)

    def connectionLost(self, reason=None) -> None:
        self.done = True


async def settle(read, quiet: float = 0.3, timeout: float = 60.0) -> int:
    """
    Wait until C{read()} stops growing for C{quiet} seconds (failing if it
    still grows after C{timeout}), and return it.
    """
    # No event marks a producer held back by backpressure: only a quiet
    # spell shows it, so the spell is bounded, and so is the wait for one.
    deadline = reactor.seconds() + timeout
    last = -1
    while read() != last:
        assert reactor.seconds() < deadline, f"still growing after {timeout}s: {read()}"
        last = read()
        await deferLater(reactor, quiet, lambda: None)
    return last


async def paused_consumer(running_hub) -> SlowReader:
    """
    A L{SlowReader} connected to the hub, its reading paused.
    """
    consumer = SlowReader()
    endpoint = clientFromString(reactor, f"tcp:127.0.0.1:{running_hub.consumer_port}")
    await endpoint.connect(Factory.forProtocol(lambda: consumer))
    consumer.transport.pauseProducing()
    return consumer


async def held_back_then_drained(consumer: SlowReader, produced, total: int) -> int:
    """
    Wait until C{produced()} stops growing while C{consumer} reads nothing,
    then let it read everything.

    :return: how much was produced while the consumer was paused.
    """
    held_back = await settle(produced)
    consumer.transport.resumeProducing()
    await wait_for(lambda: consumer.done, timeout=60, what="the whole body")
    assert produced() == total
    assert consumer.received > total
    return held_back
