"""
A slow consumer holds back its worker: the hub never buffers a large
response in its own memory.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet.interfaces import IPullProducer
from zope.interface import implementer

from tests.harness import wait_for
from tests.peers import MIB, held_back_then_drained, paused_consumer, scripted_worker

pytestmark = pytest.mark.net

#: Far larger than every socket buffer between worker and consumer.
RESPONSE_BYTES = 256 * MIB

CHUNK = b"x" * (256 * 1024)


@implementer(IPullProducer)
class BigBody:
    """
    A response body of RESPONSE_BYTES, written only as fast as the worker's
    socket accepts it (a pull producer), counting what was written.
    """

    def __init__(self) -> None:
        self.written = 0
        self.transport = None

    def start(self, transport) -> None:
        self.transport = transport
        transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (RESPONSE_BYTES,))
        transport.registerProducer(self, False)

    def resumeProducing(self) -> None:
        if self.written >= RESPONSE_BYTES:
            self.transport.unregisterProducer()
            return
        self.transport.write(CHUNK)
        self.written += len(CHUNK)

    def stopProducing(self) -> None:
        pass


@pytest_twisted.ensureDeferred
async def test_slow_consumer_pauses_worker(running_hub):
    """
    While the consumer reads nothing, the worker can send only what the
    socket buffers hold; once the consumer reads, the whole body arrives.
    """
    body = BigBody()
    worker = await scripted_worker(running_hub, body.start)
    consumer = await paused_consumer(running_hub)
    await wait_for(lambda: body.transport is not None, what="the request to reach the worker")

    held_back = await held_back_then_drained(consumer, lambda: body.written, RESPONSE_BYTES)
    assert held_back < 64 * MIB, f"hub let {held_back / MIB:.0f} MiB through a paused consumer"
    worker.transport.loseConnection()
    await wait_for(lambda: running_hub.pool.slots == set(), what="the worker to detach")
