"""
The consumer side of the hub: an ordinary twisted.web Site whose only
resource turns every request into a job and queues it.
"""

from __future__ import annotations

from functools import partial

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from pothead.access_log import BufferedLogFile
from pothead.address import host_port
from pothead.attach import tune_tcp
from pothead.client import InvalidRequest
from pothead.job import Job
from pothead.limits import Limits
from pothead.pool import Pool

_log = Logger()

_STATUS_LINES = {
    400: b"400 Bad Request",
    408: b"408 Request Timeout",
    413: b"413 Content Too Large",
    414: b"414 URI Too Long",
    431: b"431 Request Header Fields Too Large",
}


class ConsumerRequest(Request):
    """
    A consumer request whose response headers are exactly the worker's,
    and whose body may not outgrow the hub's limit.

    twisted.web would add ``Content-Type: text/html`` to a response that
    has none; a proxy must not invent headers its worker did not send.
    """

    defaultContentType = None
    _body_received = 0

    #: The job made of this request, once it has been queued.
    job: Job | None = None

    def handleContentChunk(self, data: bytes) -> None:
        # A Content-Length body was checked before it started; a chunked
        # one can only be checked as it arrives.
        self._body_received += len(data)
        if self._body_received > self.channel.limits.max_body_bytes:
            self.channel.refuse(413, "request body over the limit")
            return
        super().handleContentChunk(data)

    def connectionLost(self, reason: Failure) -> None:
        # Told here rather than through notifyFinish(): a Deferred per
        # queued job is memory the queue does not need.
        super().connectionLost(reason)
        if self.job is not None:
            self.job.consumer_lost()


class ConsumerChannel(HTTPChannel):
    """
    An HTTP channel that enforces the hub's limits on what consumers send,
    and answers every request it refuses with a status code and a log line.

    Twisted's own channel closes the connection without a response when a
    line is too long, answers 400 to every other refusal, and lets a client
    trickle a request for as long as it sends a byte a minute.
    """

    #: Whether a request head has begun and not ended.
    _in_head = False

    def __init__(self, limits: Limits) -> None:
        super().__init__()
        self.limits = limits
        self.MAX_LENGTH = self.totalHeadersSize = limits.max_header_bytes
        self._deadline: IDelayedCall | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        tune_tcp(self.transport)

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        # The head's deadline runs from its first byte (this reactor turn),
        # so that a request line trickled a byte at a time is bounded too.
        # A head that arrived whole in this read needs no timer at all.
        if self._deadline is None and self._head_unfinished():
            self._set_deadline(self.limits.header_timeout, "request head")

    def _head_unfinished(self) -> bool:
        if not self.line_mode or self.transport.disconnecting:
            return False
        return self._in_head or (not self.requests and bool(self._buffer))

    def lineReceived(self, line: bytes) -> None:
        self._in_head = True
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            self._refuse_head()
            return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._refuse_head()

    def allHeadersReceived(self) -> None:
        self._in_head = False
        self._clear_deadline()
        if self.length is not None and self.length > self.limits.max_body_bytes:
            # Refused before Twisted reads the body or sends 100 Continue.
            self.refuse(413, f"Content-Length {self.length} over the limit")
            return
        if self.length != 0:
            self._set_deadline(self.limits.body_timeout, "request body")
        super().allHeadersReceived()

    def allContentReceived(self) -> None:
        self._clear_deadline()
        super().allContentReceived()

    def timeoutConnection(self) -> None:
        # Twisted's idle timeout (60 s without a byte) would cut a consumer
        # that pauses in the middle of a request before the hub's own head
        # and body deadlines, which are the ones that bound a request: while
        # one runs, idleness alone ends nothing.  Between requests the idle
        # timeout applies as before.
        if self._deadline is not None:
            self.resetTimeout()
            return
        super().timeoutConnection()

    def connectionLost(self, reason) -> None:
        self._clear_deadline()
        super().connectionLost(reason)

    def _set_deadline(self, seconds: float, what: str) -> None:
        self._clear_deadline()
        self._deadline = self.callLater(seconds, self._too_slow, what, seconds)

    def _clear_deadline(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def _too_slow(self, what: str, seconds: float) -> None:
        self._deadline = None
        self.refuse(408, f"{what} not received within {seconds:g}s")

    def _refuse_head(self) -> None:
        # Nothing received yet for this request: the request line itself
        # is too long.
        if self._receivedHeaderSize:
            self.refuse(431, "request headers over the limit")
        else:
            self.refuse(414, "request line over the limit")

    def _respondToBadRequestAndDisconnect(self) -> None:
        self.refuse(400, "malformed request")

    def refuse(self, code: int, why: str) -> None:
        """
        Answer C{code} and close the connection: the rest of what this
        consumer sent can no longer be trusted to be framed right.
        """
        self._clear_deadline()
        _log.info(
            "refused a request from {peer}: {status} ({why})",
            peer=host_port(self.transport.getPeer()),
            status=_STATUS_LINES[code].decode(),
            why=why,
        )
        body = _STATUS_LINES[code][4:] + b"\n"
        self.transport.write(
            b"HTTP/1.1 %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s" % (_STATUS_LINES[code], len(body), body)
        )
        self.loseConnection()
        # Stop parsing whatever else is buffered for this connection.
        self.dataReceived = self.lineReceived = self.rawDataReceived = _ignore


def _ignore(*args: object) -> None:
    pass


class JobResource(Resource):
    """
    Queue every request, whatever its path, as a job for the pool.
    """

    isLeaf = True

    def __init__(self, pool: Pool, clock: IReactorTime, limits: Limits) -> None:
        super().__init__()
        self._pool = pool
        self._clock = clock
        self._limits = limits

    def render(self, request: Request) -> bytes | int:
        if len(request.requestHeaders.getRawHeaders(b"host", ())) > 1:
            # RFC 9112 section 3.2: a request with several Host headers is
            # answered 400; a worker must not have to guess which one counts.
            request.channel.refuse(400, "several Host headers")
            return NOT_DONE_YET
        try:
            request.job = Job(request, self._pool, self._clock, self._limits)
        except InvalidRequest as error:
            request.channel.refuse(400, str(error))
            return NOT_DONE_YET
        request.job.queue()
        return NOT_DONE_YET


class ConsumerSite(Site):
    """
    The consumers' Site, whose access log file, if it has one, is written
    in blocks rather than a line at a time.
    """

    def _openLogFile(self, path: str) -> BufferedLogFile:
        return BufferedLogFile(path, self.reactor)


#: ``--access-log`` value that turns the access log off.
NO_ACCESS_LOG = "none"


def consumer_site(
    pool: Pool, clock: IReactorTime, limits: Limits, access_log: str | None = None
) -> Site:
    """
    The Site consumers talk to.

    :param pool: where their requests are queued.
    :param clock: the hub's clock, for queue times and timeouts.
    :param limits: what consumers may send, and how long they may wait.
    :param access_log: where the access log goes (combined log format):
        L{None} for the twistd log, a path for a file of its own (written
        in blocks, so cheaper per request), or C{"none"}.
    """
    log_path = None if access_log in (None, NO_ACCESS_LOG) else access_log
    site = ConsumerSite(
        JobResource(pool, clock, limits),
        requestFactory=ConsumerRequest,
        reactor=clock,
        logPath=log_path,
        # A proxy passes a form upload on as it is: Twisted would read the
        # whole body into memory to parse it, and refuse a multipart body
        # it cannot parse with a 400 of its own.
        parsePOSTFormSubmission=False,
    )
    if access_log == NO_ACCESS_LOG:
        site.log = _ignore
    site.displayTracebacks = False
    site.protocol = partial(ConsumerChannel, limits)
    return site
