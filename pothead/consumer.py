"""
The consumer side of the hub: an ordinary twisted.web Site whose only
resource turns every request into a job and queues it.
"""

from __future__ import annotations

from functools import partial

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from pothead.job import Job
from pothead.pool import Pool

KIB = 1024

#: Real cookies and bearer tokens outgrow Twisted's 16 KiB default, which
#: also closes the connection without a word; see ConsumerChannel.
DEFAULT_MAX_HEADER_BYTES = 64 * KIB

_log = Logger()

_STATUS_LINES = {
    400: b"400 Bad Request",
    414: b"414 URI Too Long",
    431: b"431 Request Header Fields Too Large",
}


class ConsumerRequest(Request):
    """
    A consumer request whose response headers are exactly the worker's.

    twisted.web would add ``Content-Type: text/html`` to a response that
    has none; a proxy must not invent headers its worker did not send.
    """

    defaultContentType = None


class ConsumerChannel(HTTPChannel):
    """
    An HTTP channel with a larger, configurable header limit, which answers
    every request it refuses with a status code and a log line.

    Twisted's own channel closes the connection without a response when a
    line is too long, and answers 400 to every other refusal.
    """

    def __init__(self, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES) -> None:
        super().__init__()
        self.MAX_LENGTH = self.totalHeadersSize = max_header_bytes

    def lineReceived(self, line: bytes) -> None:
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            self._refuse_head()
            return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._refuse_head()

    def _refuse_head(self) -> None:
        # Nothing received yet for this request: the request line itself
        # is too long.
        self._refuse(431 if self._receivedHeaderSize else 414)

    def _respondToBadRequestAndDisconnect(self) -> None:
        self._refuse(400)

    def _refuse(self, code: int) -> None:
        _log.info(
            "refused a request from {peer}: {status}",
            peer=self.transport.getPeer(),
            status=_STATUS_LINES[code].decode(),
        )
        body = _STATUS_LINES[code][4:] + b"\n"
        self.transport.write(
            b"HTTP/1.1 %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s" % (_STATUS_LINES[code], len(body), body)
        )
        self.loseConnection()
        # Stop parsing whatever else is buffered for this connection.
        self.dataReceived = self.lineReceived = lambda *args: None


class JobResource(Resource):
    """
    Queue every request, whatever its path, as a job for the pool.
    """

    isLeaf = True

    def __init__(self, pool: Pool, clock: IReactorTime) -> None:
        super().__init__()
        self._pool = pool
        self._clock = clock

    def render(self, request: Request) -> int:
        Job(request, self._pool, self._clock).queue()
        return NOT_DONE_YET


def consumer_site(
    pool: Pool, clock: IReactorTime, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
) -> Site:
    """
    The Site consumers talk to.

    :param pool: where their requests are queued.
    :param clock: the hub's clock, for queue times.
    :param max_header_bytes: the largest request line plus headers accepted.
    """
    site = Site(JobResource(pool, clock), requestFactory=ConsumerRequest)
    site.displayTracebacks = False
    site.protocol = partial(ConsumerChannel, max_header_bytes)
    return site
