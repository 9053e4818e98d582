"""
An HTTP/1.1 server of pothead's own, for both ends of the hub: the hub's
consumer side (L{pothead.consumer}) and a worker's slots, which serve the
requests the hub sends them (L{pothead.slot_server}).

twisted.web's channel and request objects cost about 4.5 kB per
connection and, through their general-purpose machinery, about half of a
request's handling time on either side; a queued job is mostly a consumer
connection waiting, and the hub may hold thousands.  This server keeps
what both sides need: the request as sent, its body spooled, every limit
with its status code, and the response written with the client's own
framing.  What is done with a request is its factory's business.

One request is served at a time per connection; pipelined requests wait
in the buffer (reading stops once it holds more than a head's worth) and
are answered in order.
"""

from __future__ import annotations

from tempfile import SpooledTemporaryFile
from typing import IO
from typing import Protocol as TypingProtocol

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime, ISSLTransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import datetimeToString

from pothead.address import host_port
from pothead.http1 import NO_BODY_CODES, BodyReader, after_head, head_end
from pothead.limits import Limits
from pothead.request import BadRequest, RequestHead, parse_request_head
from pothead.sockets import send_now, tune_tcp

_log = Logger()

_STATUS_LINES = {
    400: b"400 Bad Request",
    408: b"408 Request Timeout",
    413: b"413 Content Too Large",
    414: b"414 URI Too Long",
    431: b"431 Request Header Fields Too Large",
    501: b"501 Not Implemented",
    505: b"505 HTTP Version Not Supported",
}

#: Request bodies up to this size stay in memory; larger ones go to a
#: temporary file.
SPOOL_IN_MEMORY = 1024 * 1024


class ServerRequest:
    """
    One request, and the writer of its response.

    The response head is written once, with the client's own framing:
    the HTTP version it spoke, ``Connection: close`` if it asked for it,
    and a chunked body when the response has no length.

    :ivar head: the parsed request head.
    :ivar content: the spooled body, or L{None} if the request framed none.
    :ivar code: the response status, once started.
    :ivar sent: body bytes written to the client.
    :ivar started: whether the response head has been written.
    :ivar finished: whether the response is complete.
    """

    __slots__ = (
        "channel", "head", "content", "code", "sent", "started", "finished",
        "_chunked", "_body_allowed", "_unsent",
    )

    #: Whether a request whose body is still arriving is handled at once,
    #: its body read as it arrives (C{received} and C{body_complete} then
    #: feed and end it, C{abandon_body} gives it up).  Otherwise a request
    #: is handled once its body is complete.
    streams_body = False

    def __init__(self, channel: ServerChannel, head: RequestHead) -> None:
        self.channel = channel
        self.head = head
        self.content: IO[bytes] | None = None
        self.code = 0
        self.sent = 0
        self.started = False
        self.finished = False
        self._chunked = False
        self._body_allowed = True
        self._unsent = False

    def client_address(self):
        """The client's address."""
        return self.channel.transport.getPeer()

    def own_address(self):
        """The address the client connected to."""
        return self.channel.transport.getHost()

    def is_secure(self) -> bool:
        """Whether the client connected over TLS."""
        return ISSLTransport.providedBy(self.channel.transport)

    def start(
        self,
        code: int,
        phrase: bytes,
        fields: list[tuple[bytes, bytes]],
        content_length: bytes | None,
    ) -> None:
        """
        Write the response head: the status line, the connection's own
        ``Connection`` header, C{fields} in order, and how the body is
        framed.

        :param fields: end-to-end headers, ``Content-Length`` among them
            where it stood if it is C{content_length}.
        :param content_length: the body's length, if known.
        """
        head = self.head
        self.code = code
        self.started = True
        self._body_allowed = head.method != b"HEAD" and code not in NO_BODY_CODES
        framed = content_length is not None or not self._body_allowed
        lines = [b"%s %d %s\r\n" % (head.version, code, phrase)]
        if head.version == b"HTTP/1.1":
            if not head.keep_alive:
                lines.append(b"Connection: close\r\n")
        elif head.keep_alive:
            # An HTTP/1.0 client's connection outlives a response only if
            # the response's length is known and the client is told so.
            head.keep_alive = framed
            if framed:
                lines.append(b"Connection: keep-alive\r\n")
        for name, value in fields:
            lines.append(b"%s: %s\r\n" % (name, value))
        if not framed and head.version == b"HTTP/1.1":
            self._chunked = True
            lines.append(b"Transfer-Encoding: chunked\r\n")
        lines.append(b"\r\n")
        self.channel.transport.writeSequence(lines)
        self._unsent = True

    def write(self, data: bytes) -> None:
        """
        Write a piece of the response body.
        """
        if not self._body_allowed or not data:
            return
        self.sent += len(data)
        if self._chunked:
            self.channel.transport.writeSequence((b"%x\r\n" % (len(data),), data, b"\r\n"))
        else:
            self.channel.transport.write(data)
        self._unsent = True

    def flush(self) -> None:
        """
        Send what this response has written so far now, not on the
        reactor's next turn (L{send_now}); nothing, not even an empty
        C{send}, if it has all been sent.
        """
        if self._unsent:
            self._unsent = False
            send_now(self.channel.transport)

    def finish(self) -> None:
        """
        The response is complete.
        """
        if self._chunked:
            self.channel.transport.write(b"0\r\n\r\n")
            self._unsent = True
        self.finished = True
        self.flush()
        self.channel.answered(self)

    def register_producer(self, producer: IPushProducer) -> None:
        """
        Let the connection pause C{producer} while it cannot
        take more.
        """
        self.channel.transport.registerProducer(producer, True)

    def unregister_producer(self) -> None:
        self.channel.transport.unregisterProducer()

    def abort(self) -> None:
        """
        Cut the connection.
        """
        self.channel.transport.abortConnection()

    def answer(self, code: int, phrase: bytes, fields: list[tuple[bytes, bytes]],
               body: bytes) -> None:
        """
        Write a whole response of the server's own.
        """
        fields = [(b"Date", datetimeToString()), *fields,
                  (b"Content-Length", b"%d" % (len(body),))]
        self.start(code, phrase, fields, fields[-1][1])
        self.write(body)
        self.finish()

    def received(self, data: bytes) -> None:
        """
        A piece of the request body.
        """
        if self.content is None:
            self.content = SpooledTemporaryFile(SPOOL_IN_MEMORY)
        self.content.write(data)

    def body_complete(self) -> None:
        """
        The whole body has arrived: rewind it to be read.
        """
        if self.content is not None:
            self.content.seek(0)

    def abandon_body(self) -> None:
        """
        The connection is closing before a streamed body was all read:
        see L{streams_body}.  Nothing to do for a spooled body.
        """

    def close(self) -> None:
        """
        Let go of the spooled body.
        """
        if self.content is not None:
            self.content.close()


class RequestHandler(TypingProtocol):
    """
    What a L{ServerChannel}'s factory does with the requests it reads.
    """

    limits: Limits
    clock: IReactorTime
    request_class: type[ServerRequest]

    def handle(self, request: ServerRequest) -> None:
        """
        C{request} arrived whole, its body (if any) spooled and rewound;
        answer it, now or later, through its response methods.
        """

    def answered(self, request: ServerRequest) -> None:
        """
        The response to C{request} is complete.
        """

    def lost(self, request: ServerRequest) -> None:
        """
        The connection was lost before C{request} was answered.
        """


class ServerChannel(Protocol):
    """
    One client connection: read requests, enforce the factory's limits,
    hand each request to the factory, and answer every refusal with a
    status code and a log line.

    Between requests the connection may stay idle for the idle timeout; a
    request head must arrive within the header timeout from its first
    byte, and its body within the body timeout from the end of its head.
    A head read whole in one read arms no timer at all, and a timeout of
    L{None} none ever.
    """

    def __init__(self, factory: RequestHandler) -> None:
        self.factory = factory
        self.limits: Limits = factory.limits
        # A bytearray, so that a head arriving in many pieces is gathered
        # without copying it whole for each piece.
        self._buffer = bytearray()
        self._request: ServerRequest | None = None
        self._body: BodyReader | None = None
        self._deadline: IDelayedCall | None = None
        self._closing = False
        self._paused = False
        self._reading = False
        #: Whether the request being received was handed on at its head.
        self._streaming = False
        #: How much of the buffer holds no head end.
        self._searched = 0

    def connectionMade(self) -> None:
        tune_tcp(self.transport)
        self._set_deadline(self.limits.idle_timeout, None)

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        if self._body is not None:
            try:
                self._body.feed(data)
            except BadRequest as error:
                self.refuse(error.status, str(error))
                return
        else:
            self._buffer += data
        self._serve()

    def _serve(self) -> None:
        """
        Read requests from the buffer while no request is being received
        or answered; a loop, not recursion, however many are pipelined.
        """
        if self._reading:
            return
        self._reading = True
        try:
            while (self._request is None and self._buffer and not self._closing
                   and self._read_head()):
                pass
        except BadRequest as error:
            self.refuse(error.status, str(error))
        finally:
            self._reading = False
        if self._request is not None and len(self._buffer) > self.limits.max_header_bytes:
            # Pipelined requests beyond a head's worth wait in the socket.
            self._paused = True
            self.transport.pauseProducing()

    def _read_head(self) -> bool:
        """
        Read a request head from the buffer, if it holds a whole one.

        :return: whether it did.
        """
        buffer = self._buffer
        if buffer[0] in b"\r\n":
            # RFC 9112 section 2.2: empty lines before a request line are
            # ignored.
            buffer = self._buffer = buffer.lstrip(b"\r\n")
            if not buffer:
                return False
        # A head trickled in pieces is searched only where its end may be
        # new, so its cost stays linear in its size.
        end = head_end(buffer, max(0, self._searched - 2))
        limit = self.limits.max_header_bytes
        if end < 0:
            self._searched = len(buffer)
            if len(buffer) > limit:
                self._refuse_head(buffer)
            elif self._deadline_for is not _HEAD:
                self._set_deadline(self.limits.header_timeout, _HEAD)
            return False
        self._searched = 0
        if end > limit:
            self._refuse_head(buffer)
            return False
        head = parse_request_head(bytes(buffer[:end]))
        rest = bytes(after_head(buffer, end))
        self._buffer = bytearray()
        self._clear_deadline()
        if head.length is not None and head.length > self.limits.max_body_bytes:
            # Refused from the head, before any body byte or 100 Continue.
            raise BadRequest(f"Content-Length {head.length} over the limit", 413)
        request = self._request = self.factory.request_class(self, head)
        if head.has_body:
            # Even an empty body is a body: the worker is told its length.
            request.received(b"")
        if not head.has_body or head.length == 0:
            self._handle(request, rest)
            return True
        if head.expects_continue and not rest:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self._set_deadline(self.limits.body_timeout, _BODY)
        self._body = BodyReader(self._body_piece, self._body_done, BadRequest)
        if head.chunked:
            self._body.chunked(rest)
        else:
            self._body.counted(head.length, rest)
        if self._body is not None and request.streams_body:
            self._streaming = True
            self.factory.handle(request)
        return True

    def _body_piece(self, data: bytes) -> None:
        request = self._request
        request.received(data)
        if request.content.tell() > self.limits.max_body_bytes:
            # A Content-Length was checked from the head; a chunked body
            # can only be checked as it arrives.
            raise BadRequest("request body over the limit", 413)

    def _body_done(self, rest: bytes) -> None:
        self._body = None
        self._clear_deadline()
        request = self._request
        if not self._streaming:
            self._handle(request, rest)
            return
        self._streaming = False
        self._buffer = bytearray(rest)
        request.body_complete()
        if request.finished:
            self.answered(request)

    def _handle(self, request: ServerRequest, rest: bytes) -> None:
        self._buffer = bytearray(rest)
        request.body_complete()
        self.factory.handle(request)

    def answered(self, request: ServerRequest) -> None:
        """
        The response to C{request} is complete: tell the factory, then
        read the next request, or close the connection if it carries no
        more.

        A response may be complete before a streamed body is: the rest of
        the body is then read and dropped, and the connection goes on
        once it ends.
        """
        if self._body is not None:
            request.close()
            return
        self.factory.answered(request)
        request.close()
        self._request = None
        if not request.head.keep_alive:
            self.transport.loseConnection()
            self._closing = True
            return
        if self._paused:
            self._paused = False
            self.transport.resumeProducing()
        if self._buffer:
            self._serve()
        if self._request is None:
            self.idle()

    def idle(self) -> None:
        """
        No request is being received or answered: the idle timeout runs.
        """
        if self._deadline is None:
            self._set_deadline(self.limits.idle_timeout, None)

    @property
    def busy(self) -> bool:
        """
        Whether a request is being received or answered.
        """
        return self._request is not None

    def connectionLost(self, reason: Failure) -> None:
        # The spooled body of a request cut off here is left to the
        # factory: it may still be read (by a worker, by an app's thread).
        self._clear_deadline()
        request, self._request = self._request, None
        if request is not None and not request.finished:
            self.factory.lost(request)

    # Deadlines: one timer per connection at most, for the idle time
    # between requests, a head, or a body.

    _deadline_for: object = None

    def _set_deadline(self, seconds: float | None, what: object) -> None:
        self._clear_deadline()
        if seconds is None:
            return
        self._deadline_for = what
        self._deadline = self.factory.clock.callLater(seconds, self._too_slow, what, seconds)

    def _clear_deadline(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None
            self._deadline_for = None

    def _too_slow(self, what: object, seconds: float) -> None:
        self._deadline = None
        self._deadline_for = None
        if what is None:
            # Idle between requests: nothing to answer.
            self.transport.loseConnection()
            self._closing = True
            return
        self.refuse(408, f"{what} not received within {seconds:g}s")

    def _refuse_head(self, buffer: bytes) -> None:
        line_end = buffer.find(b"\n")
        if line_end < 0 or line_end > self.limits.max_header_bytes:
            self.refuse(414, "request line over the limit")
        else:
            self.refuse(431, "request headers over the limit")

    def refuse(self, code: int, why: str) -> None:
        """
        Answer C{code} and close the connection: the rest of what this
        client sent can no longer be trusted to be framed right.
        """
        self._clear_deadline()
        self._closing = True
        self._body = None
        if self._streaming:
            self._streaming = False
            self._request.abandon_body()
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
        self.transport.loseConnection()


#: What a deadline is for, in log lines.
_HEAD, _BODY = "request head", "request body"


