"""
What a worker's slot serves once attached: the requests the hub sends
down it, read by pothead's own HTTP/1.1 server (L{pothead.http.server})
and handed to twisted.web.wsgi as though twisted.web had read them, but
at once: the app reads the body as it arrives (L{pothead.worker.body_pipe}).

A slot's connection carries one request at a time from one peer, the hub,
which has already checked every request against its own limits; what is
left for the worker to do per request is little, and twisted.web's
channel and request objects were most of it (about 40 % of the worker's
time per small request).  L{WSGIRequest} is the part of twisted.web's
request that C{WSGIResource} uses, and it writes the response exactly as
twisted.web does: the same status line, C{Server} and C{Date} first, the
app's headers grouped and named as twisted.web's C{Headers} groups and
names them, and the same framing.
"""

from __future__ import annotations

import re
import sys
from io import BytesIO
from typing import Iterator, Protocol
from urllib.parse import unquote_to_bytes as unquote

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IPushProducer, IReactorTime, ISSLTransport
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure
from twisted.python.threadable import isInIOThread
from twisted.web.http import RESPONSES, datetimeToString
from twisted.web.http_headers import Headers
from twisted.web.resource import IResource
from twisted.web.server import version as SERVER

from pothead.http.limits import MIB, MessageLimits
from pothead.http.request import RequestHead
from pothead.http.server import ServerChannel, ServerRequest
from pothead.worker.body_pipe import BodyPipe
from pothead.worker.metrics import WorkerMetrics

#: What a slot accepts from its hub: any body (the hub enforced its own
#: limit), heads up to 1 MiB (the hub's own limit plus the headers it
#: adds), and no timeouts: an idle slot is a worker waiting for work.
SLOT_LIMITS = MessageLimits(
    max_header_bytes=1 * MIB,
    max_body_bytes=sys.maxsize,
    header_timeout=None,
    body_timeout=None,
    idle_timeout=None,
)

#: The name in a Host header, read as twisted.web reads it (an IPv6
#: literal without its brackets).
_HOST = re.compile(rb"^\[?(.*?)\]?(:\d+)?$")


class RequestHeaders:
    """
    A request's headers, read-only, as the public API of twisted.web's
    L{Headers} gives them to C{twisted.web.wsgi}: what it calls of them,
    C{getAllRawHeaders}, and nothing else.

    A view of the head's fields, not a copy: building a real L{Headers}
    (each name canonicalised and checked again, each value sanitised, all
    of which llhttp has already done) cost about 1.5 us more per request
    in a micro-benchmark, this view nothing measurable (docs/twisted.md).
    tests/test_twisted_private.py pins that twisted.web.wsgi calls nothing
    else of it.
    """

    __slots__ = ("_fields",)

    def __init__(self, fields: list[tuple[bytes, bytes]]) -> None:
        self._fields = fields

    def getAllRawHeaders(self) -> Iterator[tuple[bytes, list[bytes]]]:
        """
        Each name once with all its values in order, as C{Headers} gives
        them; names are lower case rather than canonical, which the WSGI
        environ, upper-casing them, cannot tell apart.
        """
        grouped: dict[bytes, list[bytes]] = {}
        for name, value in self._fields:
            grouped.setdefault(name.lower(), []).append(value)
        return iter(grouped.items())


class SlotRequest(ServerRequest):
    """
    A request the hub sent down a slot, whose response tells the slot's
    attachment the moment it is all written (L{Attachment.response_written}):
    at the piece that completes a body of known length, which is sent at
    once, or else at C{finish}.
    """

    __slots__ = ("_length", "_written")

    def __init__(self, channel: SlotChannel, head: RequestHead) -> None:
        super().__init__(channel, head)
        self._length: int | None = None
        self._written = False

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.sent == self._length:
            self.written()
            self.flush()

    def written(self) -> None:
        # Once: at the last piece of a body of known length, else at finish.
        if not self._written:
            self._written = True
            self.channel.attachment.response_written()


class WSGIRequest(SlotRequest):
    """
    One request from the hub, as C{twisted.web.wsgi} reads a
    L{twisted.web.server.Request}, and its response, written as
    twisted.web writes it.

    Like twisted.web's, the response head goes out with the first write
    (or at C{finish}); writes after the connection is gone are dropped.
    Unlike twisted.web's, a request is handed to the app as soon as its
    head is read, its body (C{content}, C{wsgi.input}) read by the app as
    it arrives (L{BodyPipe}).

    What twisted.web.wsgi reads of it, and that the environ it builds is
    the one it builds from twisted.web's own request, is pinned by
    tests/test_twisted_private.py (docs/twisted.md).
    """

    streams_body = True

    __slots__ = (
        "method", "uri", "clientproto", "prepath", "postpath", "code_message",
        "responseHeaders", "defaultContentType", "_waiting", "_gone",
    )

    def __init__(self, channel: SlotChannel, head: RequestHead) -> None:
        super().__init__(channel, head)
        self.method = head.method
        self.uri = head.target
        self.clientproto = head.version
        # As twisted.web's Site finds a leaf resource at the root.
        self.prepath: list[bytes] = []
        self.postpath = [unquote(s) for s in head.target.split(b"?", 1)[0][1:].split(b"/")]
        self.code = 200
        self.code_message = b"OK"
        self.responseHeaders = Headers()
        self.defaultContentType: bytes | None = None
        self._waiting: list[Deferred[None]] = []
        self._gone = False

    def received(self, data: bytes) -> None:
        if self.content is None:
            transport = self.channel.transport
            self.content = BodyPipe(transport.pauseProducing, self._resume_reading)
        self.content.write(data)

    def body_complete(self) -> None:
        if self.content is not None:
            self.content.end()

    def abandon_body(self) -> None:
        if isinstance(self.content, BodyPipe):
            self.content.fail()

    def _resume_reading(self) -> None:
        # From the app's thread, handed to the reactor; from the reactor's
        # (a body given up), at once, before the connection's close.
        if isInIOThread():
            self.channel.transport.resumeProducing()
        else:
            self.channel.factory.clock.callFromThread(self.channel.transport.resumeProducing)

    # What WSGIResource reads.

    def getHeader(self, name: bytes) -> bytes | None:
        values = self.head.values(name.lower())
        return values[-1] if values else None

    @property
    def requestHeaders(self) -> RequestHeaders:
        """
        The request's headers, as twisted.web.wsgi reads them: read once
        per request, for the environ's C{HTTP_*} keys.
        """
        return RequestHeaders(self.head.fields)

    def getRequestHostname(self) -> bytes:
        if self.head.host is not None:
            match = _HOST.match(self.head.host)
            if match is not None:
                return match.group(1)
        return self.channel.host.host.encode("ascii")

    def getHost(self):
        return self.channel.host

    def getClientAddress(self):
        return self.channel.peer

    def isSecure(self) -> bool:
        return self.channel.secure

    def notifyFinish(self) -> Deferred[None]:
        """
        Fires when the response is complete, fails if the connection is
        lost first.
        """
        finished: Deferred[None] = Deferred()
        if self.finished:
            finished.callback(None)
        elif self._gone:
            finished.errback(Failure(ConnectionLost()))
        else:
            self._waiting.append(finished)
        return finished

    # How WSGIResource answers.

    def setResponseCode(self, code: int, message: bytes | None = None) -> None:
        self.code = code
        self.code_message = message or RESPONSES.get(code, b"Unknown Status")

    def write(self, data: bytes) -> None:
        """
        Write a piece of the body; the piece that completes a body of
        known length is sent at once.  The response is complete for the
        hub then, which can give this slot its next job while
        twisted.web.wsgi's C{finish} is still on its way from the app's
        thread (one more hand-over to the reactor).
        """
        if self._gone:
            return
        if not self.started:
            self._write_head()
        super().write(data)

    def _write_head(self) -> None:
        fields = [(b"Server", SERVER), (b"Date", datetimeToString())]
        length = None
        for name, values in self.responseHeaders.getAllRawHeaders():
            if name == b"Content-Length":
                length = values[-1]
            fields.extend((name, value) for value in values)
        if length is not None and length.isdigit():
            self._length = int(length)
        self.start(self.code, self.code_message, fields, length)

    def finish(self) -> None:
        if self._gone or self.finished:
            return
        if not self.started:
            self._write_head()
        super().finish()
        self._notify(None)

    def loseConnection(self) -> None:
        # twisted.web.wsgi's answer to an app that failed after its
        # response started: the rest of the body will not be read, and
        # a connection left paused by it would never finish closing.
        self.abandon_body()
        self.channel.transport.loseConnection()

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        self.channel.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.channel.transport.unregisterProducer()

    def connection_lost(self) -> None:
        """
        The hub went away before the response was complete.
        """
        self._gone = True
        self.abandon_body()
        self._notify(Failure(ConnectionLost()))

    def _notify(self, result: Failure | None) -> None:
        waiting, self._waiting = self._waiting, []
        for finished in waiting:
            if result is None:
                finished.callback(None)
            else:
                finished.errback(result)


class Attachment(Protocol):
    """
    What a slot's channel needs of the attached connection it serves on
    (L{pothead.worker.attach_client.AttachClient}).
    """

    #: The slot's admission ticket, told of each request by the app's
    #: middleware (L{pothead.worker.flow.flow_controlled}); L{None} on a
    #: channel not attached to a hub (L{Unattached}).
    ticket: object | None

    def channel_idle(self) -> None:
        """No request is in progress: a slot that detaches once idle goes now."""

    def response_written(self) -> None:
        """
        The response to the request the app serves is all written, and
        is sent right after this returns: what the attachment writes now
        follows it in the same send.
        """

    def hand_back(self) -> bool:
        """
        The request being served cannot be served now (a sidecar's upstream
        refuses connections): answer it with the requeue signal and detach.

        :return: whether it was handed back (a channel not attached to a
            hub has no one to hand it to).
        """

    def detaching(self) -> bool:
        """Whether the slot detaches at its next idle moment."""

    def claim(self, request: ServerRequest) -> bool:
        """
        A request arrived: whether the app serves it.  If not, the
        attachment has dealt with it: a bid it answers, or a job handed
        back to the hub.
        """

    def app_call_started(self) -> None:
        """The app was called for a request on this slot."""

    def app_call_ended(self) -> None:
        """That app call returned."""


class Unattached:
    """
    The L{Attachment} of a channel served directly on a connection of its
    own (tests, the benchmarks' container), not attached to a hub.
    """

    ticket = None

    def channel_idle(self) -> None:
        pass

    def response_written(self) -> None:
        pass

    def hand_back(self) -> bool:
        return False

    def detaching(self) -> bool:
        return False

    def claim(self, request: ServerRequest) -> bool:
        return True

    def app_call_started(self) -> None:
        pass

    def app_call_ended(self) -> None:
        pass


#: It has no state: one serves every channel not attached to a hub.
UNATTACHED = Unattached()


class SlotChannel(ServerChannel):
    """
    The HTTP server a slot runs on its connection once attached, which
    says when it has no request in progress, so a slot that detaches
    once idle (draining, or gated by admission) can do so at that moment.

    :ivar attachment: the attached connection it serves on.
    """

    def __init__(self, factory: SlotServer, attachment: Attachment) -> None:
        super().__init__(factory)
        self.attachment = attachment

    def connectionMade(self) -> None:
        super().connectionMade()
        # Asked for every request by the WSGI environ; the same all along.
        self.host = self.transport.getHost()
        self.peer = self.transport.getPeer()
        self.secure = ISSLTransport.providedBy(self.transport)

    def answered(self, request: ServerRequest) -> None:
        if self.attachment.detaching():
            # A slot that detaches once idle serves nothing more.  The hub
            # had the response at its last byte and may have sent its next
            # request already: the detach notice answers that one, as a
            # requeue signal, and the hub gives it to another slot.
            self.drop_pipelined()
        super().answered(request)

    def idle(self) -> None:
        self.attachment.channel_idle()


class SlotServer(Factory):
    """
    Every slot's server: each request the hub sends is rendered by one
    resource, a C{WSGIResource}.
    """

    request_class = WSGIRequest
    limits = SLOT_LIMITS
    #: The hub always sends one; anyone else talking to a slot directly
    #: is served as twisted.web would serve them.
    requires_host = False

    def __init__(self, resource: IResource, reactor: IReactorTime,
                 metrics: WorkerMetrics | None = None) -> None:
        """
        :param metrics: what the worker counts of its jobs (a sidecar's
            relays count theirs here; a WSGI resource counts its own).
        """
        self.resource = resource
        #: The reactor: its clock, and its C{callFromThread}, which resumes
        #: reading a body the app caught up on.
        self.clock = reactor
        self.metrics = metrics or WorkerMetrics()

    def buildProtocol(self, addr) -> SlotChannel:
        """A channel served directly, not attached to a hub."""
        return SlotChannel(self, UNATTACHED)

    def serve(self, attachment: Attachment) -> SlotChannel:
        """The channel for a connection that has just attached."""
        return SlotChannel(self, attachment)

    def handle(self, request: WSGIRequest) -> None:
        if not request.channel.attachment.claim(request):
            # A bid, or a job handed back: another hub's job has the slot.
            return
        if request.content is None:
            request.content = BytesIO()
        self.resource.render(request)

    def answered(self, request: WSGIRequest) -> None:
        pass

    def lost(self, request: WSGIRequest) -> None:
        request.connection_lost()
