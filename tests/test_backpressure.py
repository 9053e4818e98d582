"""
A slow consumer holds back its worker: the hub never buffers a large
response in its own memory.
"""

from __future__ import annotations

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IPullProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from zope.interface import implementer

from pothead.attach import attach_request
from tests.conftest import wait_for

MIB = 1024 * 1024

#: Far larger than every socket buffer between worker and consumer.
RESPONSE_BYTES = 256 * MIB

CHUNK = b"x" * (256 * 1024)


@implementer(IPullProducer)
class BigResponder(Protocol):
    """
    A hand-written worker: it attaches, reads one request head, and
    answers with RESPONSE_BYTES of body, writing only as fast as its
    socket accepts (a pull producer), and counting what it wrote.
    """

    def __init__(self) -> None:
        self.written = 0
        self.buffer = b""
        self.attached = False
        self.answering = False

    def connectionMade(self) -> None:
        self.transport.write(attach_request("hub", "default", None, "big"))

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if not self.attached and b"\r\n\r\n" in self.buffer:
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101 ")
            self.attached = True
        if self.attached and not self.answering and b"\r\n\r\n" in self.buffer:
            self.answering = True
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (RESPONSE_BYTES,)
            )
            self.transport.registerProducer(self, False)

    def resumeProducing(self) -> None:
        if self.written >= RESPONSE_BYTES:
            self.transport.unregisterProducer()
            return
        self.transport.write(CHUNK)
        self.written += len(CHUNK)

    def stopProducing(self) -> None:
        pass


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


async def settle(read) -> int:
    """
    Wait until C{read()} stops growing for 300 ms, and return it.
    """
    last = -1
    while read() != last:
        last = read()
        await deferLater(reactor, 0.3, lambda: None)
    return last


@pytest_twisted.ensureDeferred
async def test_slow_consumer_pauses_worker(running_hub):
    """
    While the consumer reads nothing, the worker can send only what the
    socket buffers hold; once the consumer reads, the whole body arrives.
    """
    worker = BigResponder()
    endpoint = clientFromString(reactor, running_hub.worker_endpoint)
    await endpoint.connect(Factory.forProtocol(lambda: worker))
    await wait_for(lambda: running_hub.pool.idle == 1, what="the worker to attach")

    consumer = SlowReader()
    consumer_endpoint = clientFromString(reactor, f"tcp:127.0.0.1:{running_hub.consumer_port}")
    await consumer_endpoint.connect(Factory.forProtocol(lambda: consumer))
    consumer.transport.pauseProducing()
    await wait_for(lambda: worker.answering, what="the request to reach the worker")

    held_back = await settle(lambda: worker.written)
    assert held_back < 64 * MIB, f"hub let {held_back / MIB:.0f} MiB through a paused consumer"

    consumer.transport.resumeProducing()
    await wait_for(lambda: consumer.done, timeout=60, what="the whole body")
    assert worker.written == RESPONSE_BYTES
    assert consumer.received > RESPONSE_BYTES
    worker.transport.loseConnection()
    await wait_for(lambda: running_hub.pool.slots == set(), what="the worker to detach")
