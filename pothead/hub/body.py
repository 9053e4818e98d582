"""
The consumer's buffered request body, sent to a worker as often as needed.

The consumer's channel (L{pothead.http.server.ServerChannel}) has already
read the whole body (into memory, or a temporary file past 1 MiB) before
the hub queues the job, so a slow upload never holds a worker.  A job may be sent more than once (requeue), so the body
must survive a failed send: Twisted's ``FileBodyProducer`` closes its file
when stopped, which would lose the body for the retry.
"""

from __future__ import annotations

from typing import IO

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConsumer
from twisted.web.client import FileBodyProducer
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

#: Bodies up to this size are written in one call, without a Cooperator
#: tick; larger ones stream in chunks, paused by the worker's backpressure.
INLINE_BODY = 256 * 1024


class _KeepOpen:
    """
    A view of a file whose C{close} does nothing, so a stopped
    L{FileBodyProducer} leaves the body readable for the next attempt.
    """

    def __init__(self, body: IO[bytes]) -> None:
        self._body = body
        self.read = body.read
        self.seek = body.seek
        self.tell = body.tell

    def close(self) -> None:
        """
        Leave the underlying file open; the consumer request owns it.
        """


@implementer(IBodyProducer)
class BufferedBody:
    """
    Produce a consumer's buffered request body for one send to a worker.

    :ivar length: the body's size in bytes.
    """

    def __init__(self, body: IO[bytes], length: int) -> None:
        self._body = body
        self.length = length
        self._streaming: FileBodyProducer | None = None

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        self._body.seek(0)
        if self.length <= INLINE_BODY:
            consumer.write(self._body.read(self.length))
            return succeed(None)
        self._streaming = FileBodyProducer(_KeepOpen(self._body))
        return self._streaming.startProducing(consumer)

    def pauseProducing(self) -> None:
        if self._streaming is not None:
            self._streaming.pauseProducing()

    def resumeProducing(self) -> None:
        if self._streaming is not None:
            self._streaming.resumeProducing()

    def stopProducing(self) -> None:
        if self._streaming is not None:
            self._streaming.stopProducing()


def body_size(body: IO[bytes]) -> int:
    """
    The size of a buffered body, leaving its position at the start.
    """
    body.seek(0, 2)
    size = body.tell()
    body.seek(0)
    return size
