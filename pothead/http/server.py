"""
An HTTP/1.1 server of pothead's own, for both ends of the hub: the hub's
consumer side (L{pothead.hub.consumer}) and a worker's slots, which serve the
requests the hub sends them (L{pothead.worker.slot_server}).

twisted.web's channel and request objects cost about 4.5 kB per
connection and, through their general-purpose machinery, about half of a
request's handling time on either side; a queued job is mostly a consumer
connection waiting, and the hub may hold thousands.  This server keeps
what both sides need: the request as sent, its body spooled (or, on a
slot, handed on as it arrives), every limit with its status code, and the
response written with the client's own framing.  What is done with a
request is its factory's business.

Every byte a client sends is parsed by llhttp (L{pothead.http.llhttp}); what
is pothead's own is policy (L{pothead.http.request}, the limits, the timeouts,
100-continue, pipelining one request at a time) and the bytes it writes.
"""

from __future__ import annotations

import re
from tempfile import SpooledTemporaryFile
from typing import IO
from typing import Protocol as TypingProtocol

from httptools import HttpParserError, HttpParserInvalidMethodError, HttpRequestParser
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime, ISSLTransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import datetimeToString

from pothead.address import host_port
from pothead.http.limits import MessageLimits
from pothead.http.llhttp import feed
from pothead.http.message import NO_BODY_CODES, reason_phrase
from pothead.http.request import BadRequest, RequestHead, request_head
from pothead.http.sockets import send_now, tune_tcp

_log = Logger()

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
        self.written()
        self.flush()
        self.channel.answered(self)

    def written(self) -> None:
        """
        The response's last byte is written, not yet sent: a hook, for what
        must follow it in the same send.
        """

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

    limits: MessageLimits
    clock: IReactorTime
    request_class: type[ServerRequest]
    #: Whether an HTTP/1.1 request without ``Host`` is refused.
    requires_host: bool

    def handle(self, request: ServerRequest) -> None:
        """
        C{request} arrived whole, its body (if any) spooled and rewound (or,
        for a request class that streams bodies, its head arrived); answer
        it, now or later, through its response methods.
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
    One client connection: read requests with llhttp, enforce the
    factory's limits, hand each request to the factory, and answer every
    refusal with a status code and a log line.

    llhttp reads every byte as it arrives, pipelined requests included:
    those wait here and are handed on one at a time, in order, each once
    the one before it is answered; with L{MAX_PIPELINED} waiting, reading
    pauses until fewer do.  A refusal waits its turn the same way; nothing
    after it is read.

    Between requests the connection may stay idle for the idle timeout; a
    request head must arrive within the header timeout from its first
    byte, and its body within the body timeout from the end of its head.
    No timer runs while a request is being answered, and a timeout of
    L{None} is none at all.

    The parser exists only while a message is being read: a connection
    whose request waits in the queue holds none.
    """

    def __init__(self, factory: RequestHandler) -> None:
        self.factory = factory
        self.limits: MessageLimits = factory.limits
        self._parser: HttpRequestParser | None = None
        #: Whether bytes from the client are still read: not once it is
        #: refused or asked to close.
        self._reading = True
        self._paused = False
        self._closing = False
        # The message llhttp is reading: its target and fields while the
        # head is incomplete (_fields is None otherwise), then the request
        # whose body it is reading.
        self._url = b""
        self._fields: list[tuple[bytes, bytes]] | None = None
        self._head_size = 0
        self._head_raw = 0
        self._begun = 0
        self._receiving: ServerRequest | None = None
        self._body_size = 0
        #: Requests read (their bodies perhaps still arriving), in order,
        #: not yet handed on.
        self._waiting: list[ServerRequest] = []
        #: The request handed to the factory and not yet answered.
        self._served: ServerRequest | None = None
        #: A refusal to answer once every request before it is answered.
        self._refusal: tuple[int, str] | None = None
        self._advancing = False
        self._deadline: IDelayedCall | None = None
        self._deadline_for: object = None

    def connectionMade(self) -> None:
        tune_tcp(self.transport)
        self._watch()

    def dataReceived(self, data: bytes) -> None:
        if not self._reading:
            return
        parser = self._parser
        if parser is None:
            parser = self._parser = HttpRequestParser(self)
        head_before = self._fields is not None
        self._begun = 0
        try:
            while True:
                rest = feed(parser, data, _refused)
                if rest < 0:
                    break
                # A request asking to switch protocols, served as plain
                # HTTP/1.1 (see on_headers_complete): go on after it.
                data = data[rest:]
        except BadRequest as error:
            if self._reading:
                if isinstance(error, _UnknownMethod) and (head_before or self._begun > 1
                                                          or not _starts_with_token(data)):
                    error.status = 400
                self._refuse(error.status, str(error))
        else:
            if self._fields is not None and not self._begun:
                # A head that began in an earlier read and is still not
                # complete (llhttp holds an unfinished field itself).
                self._head_raw += len(data)
                if self._head_raw > self.limits.max_header_bytes:
                    self._refuse(431, "request headers over the limit")
        if self._fields is None and self._receiving is None:
            # Between messages: the next read starts a parser afresh.
            self._parser = None
        served = self._served
        if served is not None and served.finished and served is not self._receiving:
            # A response complete before its streamed body, which has now
            # been read to its end.
            self.answered(served)
        else:
            self._advance()

    # llhttp's callbacks, while it reads a message.

    def on_message_begin(self) -> None:
        if not self._reading:
            raise _Stop()
        self._fields = []
        self._head_size = self._head_raw = 0
        self._begun += 1

    def on_url(self, piece: bytes) -> None:
        self._url += piece
        if len(self._url) > self.limits.max_header_bytes:
            raise BadRequest("request line over the limit", 414)

    def on_header(self, name: bytes, value: bytes) -> None:
        fields = self._fields
        if fields is None:
            # A chunked body's trailer: pothead passes no trailers on.
            return
        self._head_size += len(name) + len(value) + 4
        if self._head_size + len(self._url) > self.limits.max_header_bytes:
            raise BadRequest("request headers over the limit", 431)
        fields.append((name, value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        parser = self._parser
        fields, self._fields = self._fields, None
        url, self._url = self._url, b""
        head = request_head(
            parser.get_method(), url, parser.get_http_version(), parser.should_keep_alive(),
            fields, self.factory.requires_host,
        )
        if parser.should_upgrade() and head.has_body and head.length != 0:
            # llhttp would take the body for the new protocol's bytes; the
            # hub switches to none, so it cannot frame it.
            raise BadRequest("a body on a request asking to switch protocols")
        if head.length is not None and head.length > self.limits.max_body_bytes:
            # Refused from the head, before any body byte or 100 Continue.
            raise BadRequest(f"Content-Length {head.length} over the limit", 413)
        request = self._receiving = self.factory.request_class(self, head)
        self._body_size = 0
        if head.has_body:
            # Even an empty body is a body: the worker is told its length.
            request.received(b"")
        self._waiting.append(request)

    def on_body(self, data: bytes) -> None:
        self._body_size += len(data)
        if self._body_size > self.limits.max_body_bytes:
            # A Content-Length was checked from the head; a chunked body
            # can only be checked as it arrives.
            raise BadRequest("request body over the limit", 413)
        self._receiving.received(data)

    def on_message_complete(self) -> None:
        request, self._receiving = self._receiving, None
        request.body_complete()
        if not request.head.keep_alive:
            # Whatever follows a request that closes the connection is
            # not read.
            self._reading = False

    # Handing requests on, and their answers.

    def _advance(self) -> None:
        """
        Hand on the next request read once the one before it is answered
        (or, if it streams its body, once its head is read); answer a
        refusal once every request before it is answered.
        """
        if self._advancing:
            return
        self._advancing = True
        try:
            while self._served is None and not self._closing:
                if not self._waiting:
                    if self._refusal is not None:
                        self._write_refusal()
                    break
                request = self._waiting[0]
                if request is self._receiving and not request.streams_body:
                    self._continue(request)
                    break
                del self._waiting[0]
                self._served = request
                self.factory.handle(request)
        finally:
            self._advancing = False
        # Requests pipelined beyond MAX_PIPELINED wait in the socket (those
        # in the read that reached it are read, a read's worth at most).
        pause = len(self._waiting) >= MAX_PIPELINED and not self._closing
        if pause != self._paused:
            self._paused = pause
            if pause:
                self.transport.pauseProducing()
            else:
                self.transport.resumeProducing()
        self._watch()

    def _continue(self, request: ServerRequest) -> None:
        """
        Tell a client that waits for it before sending its body (and has
        sent none) to go on: its request is next.
        """
        if request.head.expects_continue and not self._body_size:
            request.head.expects_continue = False
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def answered(self, request: ServerRequest) -> None:
        """
        The response to C{request} is complete: tell the factory, then
        hand on the next request, or close the connection if it carries no
        more.

        A response may be complete before a streamed body is: the rest of
        the body is then read and dropped, and the connection goes on
        once it ends.
        """
        if request is self._receiving:
            request.close()
            return
        self._served = None
        self.factory.answered(request)
        request.close()
        if not request.head.keep_alive:
            self.close()
            return
        self._advance()
        if self._served is None and not self._waiting and not self._closing:
            self.idle()

    def idle(self) -> None:
        """
        No request is being answered or waits to be: a hook.
        """

    @property
    def between_requests(self) -> bool:
        """
        Whether nothing of a request is being received, waits or is being
        answered, and the connection is not closing.
        """
        return (
            self._served is None and not self._waiting and self._fields is None
            and self._receiving is None and not self._closing
        )

    @property
    def busy(self) -> bool:
        """
        Whether a request is being received or answered.
        """
        return self._served is not None or bool(self._waiting)

    def drop_pipelined(self) -> None:
        """
        Read no more, and forget the requests read and not yet handed on.
        """
        self._reading = False
        self._parser = self._fields = self._receiving = None
        waiting, self._waiting = self._waiting, []
        for request in waiting:
            request.close()

    def close(self) -> None:
        """
        Close the connection once what is written is sent; read no more.
        """
        self._closing = True
        self._clear_deadline()
        self.drop_pipelined()
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure) -> None:
        # The body of a request cut off here is left to the factory: it
        # may still be read (by a worker, by an app's thread).
        self._clear_deadline()
        self.drop_pipelined()
        served, self._served = self._served, None
        if served is not None and not served.finished:
            self.factory.lost(served)

    # Deadlines: one timer per connection at most, for the idle time
    # between requests, a head, or a body.

    def _watch(self) -> None:
        """
        Set the deadline for what the connection is waiting for now.
        """
        if self._closing or self._served is not None:
            what = None
        elif self._fields is not None:
            what = _HEAD
        elif self._receiving is not None:
            what = _BODY
        else:
            what = _IDLE
        if what is self._deadline_for:
            return
        self._clear_deadline()
        seconds = None if what is None else getattr(self.limits, _TIMEOUTS[what])
        if seconds is not None:
            self._deadline_for = what
            self._deadline = self.factory.clock.callLater(seconds, self._too_slow, what, seconds)

    def _clear_deadline(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None
        self._deadline_for = None

    def _too_slow(self, what: str, seconds: float) -> None:
        self._deadline = None
        self._deadline_for = None
        if what == _IDLE:
            # Idle between requests: nothing to answer.
            self.close()
        else:
            self._refuse(408, f"{what} not received within {seconds:g}s")

    # Refusals.

    def _refuse(self, code: int, why: str) -> None:
        """
        Refuse what the client sent: the rest of it can no longer be
        trusted to be framed right.  The refusal is answered once every
        request before it is; then the connection closes.
        """
        receiving = self._receiving
        streaming = receiving is not None and receiving is self._served
        self._reading = False
        self._parser = self._fields = self._receiving = None
        if streaming:
            receiving.abandon_body()
        elif receiving is not None:
            self._waiting.remove(receiving)
            receiving.close()
        _log.info(
            "refused a request from {peer}: {status} ({why})",
            peer=host_port(self.transport.getPeer()),
            status=f"{code} {reason_phrase(code).decode()}",
            why=why,
        )
        self._refusal = (code, why)
        self.refused(code)
        if streaming:
            self._write_refusal()
        else:
            self._advance()

    def refused(self, code: int) -> None:
        """
        A request was refused with C{code}, unhandled: a hook.
        """

    def _write_refusal(self) -> None:
        code, _ = self._refusal
        phrase = reason_phrase(code)
        body = phrase + b"\n"
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s" % (code, phrase, len(body), body)
        )
        self.close()


#: How many requests a connection may have waiting behind the one being
#: answered before the channel stops reading from it.
MAX_PIPELINED = 16


#: What a connection's deadline is for (in log lines), and the limit that
#: sets it.
_IDLE, _HEAD, _BODY = "idle time", "request head", "request body"
_TIMEOUTS = {_IDLE: "idle_timeout", _HEAD: "header_timeout", _BODY: "body_timeout"}


class _Stop(BadRequest):
    """
    Raised by a callback to stop llhttp: nothing more is read.
    """

    def __init__(self) -> None:
        super().__init__("not reading")


class _UnknownMethod(BadRequest):
    """
    A request line llhttp refused for its method: 501 if the method is a
    token it does not know, 400 if it is garbage.
    """

    def __init__(self, why: str) -> None:
        super().__init__(why, 501)


def _refused(error: HttpParserError) -> BadRequest:
    """
    The refusal of a request llhttp could not parse.
    """
    if isinstance(error, HttpParserInvalidMethodError):
        return _UnknownMethod(f"unknown method ({error})")
    if str(error) == "Invalid HTTP version":
        return BadRequest("HTTP version not supported", 505)
    return BadRequest(str(error))


def _starts_with_token(data: bytes) -> bool:
    """
    Whether a request line starts with a method-like token.
    """
    method = data.lstrip(b"\r\n").split(b" ", 1)[0]
    return 0 < len(method) <= 32 and TOKEN.fullmatch(method) is not None


#: An HTTP token (RFC 9110 section 5.6.2).
TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
