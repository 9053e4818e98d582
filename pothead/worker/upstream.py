"""
A sidecar worker: its slots relay each job the hub sends to a local HTTP
server (C{--upstream}) and that server's response back, so that pothead
fronts a server in any language as it fronts a WSGI app.

The upstream is read with the hub's own client side (L{ResponseReader},
llhttp), not twisted.web.client or treq: those hand back a response as
L{twisted.web.http_headers.Headers}, which groups repeated headers under
one canonical spelling, so the order and case the upstream sent would be
lost; pothead's reader keeps every field as sent.  The response goes to
the hub with the upstream's status, reason and fields in order, and its
framing (a length stays a length; a chunked or read-to-close body is
chunked).  Bodies stream both ways with backpressure: each side's
connection is registered as the producer of the other's.

Each slot keeps its upstream connection alive between jobs (an idle
connection is handed to the next job on any slot, at most one per slot
kept).  An upstream that refuses connections has the job handed back to
the hub with the requeue signal and the slot detached until it accepts
again (L{UpstreamAdmission}); after C{--upstream-wait} seconds down, slots
attach again and jobs are answered 502, so that consumers are not kept
waiting on a server that is not coming back.
"""

from __future__ import annotations

from typing import Callable
from urllib.parse import urlsplit

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import IPushProducer, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from pothead.http.client import BadResponse, ResponseHead, ResponseReader
from pothead.http.message import reason_phrase
from pothead.http.sockets import tune_tcp
from pothead.worker.admission import IAdmission, _Ticket
from pothead.worker.metrics import WorkerMetrics
from pothead.worker.slot_server import SlotRequest, SlotServer

_log = Logger()

#: Request and response fields that describe one connection: the relay
#: frames each side itself (RFC 9110 section 7.6.1).
_HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"expect",
})

#: Seconds between two attempts to reach an upstream that is down.
PROBE_INTERVAL = 0.5

#: Seconds between two health checks (C{--upstream-health}), and the
#: longest one may take.
HEALTH_INTERVAL = 2.0

#: Seconds an upstream may refuse connections before jobs fail with 502.
DEFAULT_UPSTREAM_WAIT = 30.0


class UpstreamState:
    """
    Whether the upstream accepts connections, as the relays last found,
    shared by every slot and by the admission.
    """

    def __init__(self, clock: IReactorTime, wait: float) -> None:
        self._clock = clock
        self.wait = wait
        #: Since when connections have been refused, or L{None}.
        self.down_since: float | None = None

    def refused(self) -> None:
        if self.down_since is None:
            self.down_since = self._clock.seconds()

    def accepted(self) -> None:
        self.down_since = None

    @property
    def given_up(self) -> bool:
        """Whether it has been down longer than C{wait}: jobs get 502."""
        return (
            self.down_since is not None
            and self._clock.seconds() - self.down_since >= self.wait
        )


@implementer(IPushProducer)
class _Throttle:
    """
    One connection's reading, paused while another's writing is full.

    Registered as the producer of the writing side, it pauses and resumes
    the reading side; released, it resumes what it paused, so that a
    connection is never left unread once the exchange it throttled is over.
    """

    def __init__(self, reading) -> None:
        self._reading = reading
        self._paused = False

    def pauseProducing(self) -> None:
        if not self._paused:
            self._paused = True
            self._reading.pauseProducing()

    def resumeProducing(self) -> None:
        if self._paused:
            self._paused = False
            self._reading.resumeProducing()

    def stopProducing(self) -> None:
        self.resumeProducing()

    def release(self, writing) -> None:
        """Stop throttling: unregister from C{writing}, resume the reading."""
        if writing.connected:
            writing.unregisterProducer()
        self.resumeProducing()


class UpstreamConnection(Protocol):
    """
    One connection to the upstream, relaying one job at a time.
    """

    def __init__(self) -> None:
        self._reader = ResponseReader(self)
        self.relay: RelayRequest | None = None

    def connectionMade(self) -> None:
        tune_tcp(self.transport)

    def send(self, relay: RelayRequest) -> None:
        """Send C{relay}'s request head; its body follows as it comes."""
        self.relay = relay
        self._reader.expect(relay.head.method)
        head = relay.head
        lines = [b"%s %s HTTP/1.1\r\n" % (head.method, head.target)]
        lines.extend(
            b"%s: %s\r\n" % (name, value)
            for name, value in head.fields if name.lower() not in _HOP_BY_HOP
        )
        if head.chunked:
            lines.append(b"Transfer-Encoding: chunked\r\n")
        lines.append(b"\r\n")
        self.transport.writeSequence(lines)

    def dataReceived(self, data: bytes) -> None:
        try:
            self._reader.feed(data)
        except BadResponse as error:
            self._fail(f"malformed response: {error}")

    # The response, as the reader hands it on.

    def response_head(self, head: ResponseHead) -> None:
        self.relay.respond(head, self.transport)

    def response_body(self, data: bytes) -> None:
        self.relay.write(data)

    def response_done(self) -> None:
        relay, self.relay = self.relay, None
        keep = self.transport.connected and relay.keep_upstream
        relay.finish()
        if not keep:
            self.transport.loseConnection()
        else:
            self.factory.idle(self)

    def unsolicited(self, head: ResponseHead) -> None:
        _log.warn("upstream sent a response ({code}) to no request; closing", code=head.code)
        self.transport.loseConnection()

    def _fail(self, why: str) -> None:
        relay, self.relay = self.relay, None
        self.transport.abortConnection()
        if relay is not None:
            relay.upstream_failed(why)

    def connectionLost(self, reason: Failure = None) -> None:
        self.factory.gone(self)
        if self._reader.connection_lost():
            # A body read until the close is complete with it.
            return
        if self.relay is not None:
            self._fail(f"upstream closed the connection: {reason.getErrorMessage()}")


class RelayRequest(SlotRequest):
    """
    One job from the hub, relayed to the upstream as it arrives, and the
    upstream's response relayed back.
    """

    streams_body = True

    __slots__ = (
        "_upstream", "_pending", "_body_done", "keep_upstream", "_uploading", "_downloading",
        "gone", "_calling", "_reused", "_began", "_failed",
    )

    def __init__(self, channel, head) -> None:
        super().__init__(channel, head)
        self._upstream: UpstreamConnection | None = None
        self._pending: list[bytes] = []
        self._body_done = False
        self.keep_upstream = True
        self._uploading: _Throttle | None = None
        self._downloading: _Throttle | None = None
        #: Whether the hub went away before the response was complete.
        self.gone = False
        self._calling = False
        self._reused = False
        self._began = 0.0
        #: Whether the upstream failed it (answered 502, or cut off).
        self._failed = False

    def call_started(self) -> None:
        """The relay is this slot's app call: a new connection of the slot
        takes no job until it is over."""
        self._calling = True
        self._began = self.channel.factory.metrics.now()
        self.channel.attachment.app_call_started()

    def call_ended(self, relayed: bool = True) -> None:
        """
        The relay is over (once, whichever way it ended).

        :param relayed: whether it counts as a job: not if it was handed
            back to the hub before reaching the upstream.
        """
        if self._calling:
            self._calling = False
            self.channel.attachment.app_call_ended()
            if relayed:
                self.channel.factory.metrics.job_done(
                    self.code if self.started else None, self._began, self._failed)

    def relay_over(self, upstream: UpstreamConnection, reused: bool = False) -> None:
        """
        The upstream connection is ready: send the request on it.

        :param reused: whether it served an earlier job (kept alive).
        """
        if self.gone:
            upstream.transport.loseConnection()
            return
        self._upstream = upstream
        self._reused = reused
        upstream.send(self)
        # The hub's connection pauses while the upstream's is full.
        self._uploading = _Throttle(self.channel.transport)
        upstream.transport.registerProducer(self._uploading, True)
        pending, self._pending = self._pending, []
        for piece in pending:
            self._send_body(piece)
        if self._body_done:
            self._end_body()

    # The request body, from the hub.

    def received(self, data: bytes) -> None:
        if self._upstream is None:
            self._pending.append(data)
        else:
            self._send_body(data)

    def body_complete(self) -> None:
        self._body_done = True
        if self._upstream is not None:
            self._end_body()

    def _send_body(self, data: bytes) -> None:
        if self.head.chunked:
            self._upstream.transport.writeSequence((b"%x\r\n" % (len(data),), data, b"\r\n"))
        else:
            self._upstream.transport.write(data)

    def _end_body(self) -> None:
        if self.head.chunked:
            self._upstream.transport.write(b"0\r\n\r\n")
        self._stop_producing()

    def _release_upstream(self) -> None:
        self._stop_producing()
        self._upstream = None
        self._reused = False

    def _stop_producing(self) -> None:
        if self._uploading is not None:
            uploading, self._uploading = self._uploading, None
            uploading.release(self._upstream.transport)

    # The response, from the upstream.

    def respond(self, head: ResponseHead, upstream_transport) -> None:
        """Write the upstream's response head to the hub, as it was sent."""
        self.keep_upstream = head.keep_alive
        fields = [(name, value) for name, value in head.headers if name.lower() not in _HOP_BY_HOP]
        if head.content_length is not None:
            self._length = int(head.content_length)
        self.start(head.code, head.phrase, fields, head.content_length)
        # The upstream's connection pauses while the hub's is full.
        self._downloading = _Throttle(upstream_transport)
        self.channel.transport.registerProducer(self._downloading, True)

    def _stop_responding(self) -> None:
        if self._downloading is not None:
            downloading, self._downloading = self._downloading, None
            downloading.release(self.channel.transport)

    def finish(self) -> None:
        self._stop_responding()
        if self._upstream is not None:
            self._stop_producing()
        super().finish()
        self.call_ended()

    def upstream_failed(self, why: str) -> None:
        """
        The upstream broke off: a response begun is cut off (the hub sees
        a broken response, as from a WSGI app failing mid-body); else the
        hub is answered 502.
        """
        if not self.started and self._reused and not self.head.has_body and not self.gone:
            # A kept-alive connection the server closed as this request went
            # out (an idle timeout, gunicorn's is 2 s): nothing of it was
            # read, and it has no body to resend; once more, on a new one.
            self._release_upstream()
            self.channel.factory.connect(self)
            return
        _log.warn("upstream failed {method} {target}: {why}", method=self.head.method,
                  target=self.head.target, why=why)
        self._failed = True
        if self.started:
            self._stop_responding()
            self.flush()
            self.channel.transport.loseConnection()
            self.call_ended()
            return
        self.answer_bad_gateway(why)

    def answer_bad_gateway(self, why: str) -> None:
        """Answer the hub 502: the upstream could not serve the job."""
        self._failed = True
        body = b"Bad Gateway: " + why.encode("utf-8", "replace") + b"\n"
        self.answer(502, reason_phrase(502), [(b"Content-Type", b"text/plain; charset=utf-8")],
                    body)


class UpstreamServer(SlotServer):
    """
    Every slot's server in a sidecar worker: each job is relayed to the
    upstream over a kept-alive connection.
    """

    request_class = RelayRequest

    def __init__(self, endpoint: IStreamClientEndpoint, reactor: IReactorTime,
                 state: UpstreamState, keep: int, metrics: WorkerMetrics | None = None) -> None:
        """
        :param keep: how many idle upstream connections to keep (one per
            slot).
        :param metrics: counts each relayed job.
        """
        super().__init__(None, reactor, metrics)
        self._endpoint = endpoint
        self.state = state
        self._keep = keep
        self._idle: list[UpstreamConnection] = []
        self._connections = _Connections(self)

    def handle(self, request: RelayRequest) -> None:
        attachment = request.channel.attachment
        if not attachment.claim(request):
            return
        request.call_started()
        if self._idle:
            request.relay_over(self._idle.pop(), reused=True)
            return
        self.connect(request)

    def connect(self, request: RelayRequest) -> None:
        """Relay C{request} over a new connection to the upstream."""
        connecting = self._endpoint.connect(self._connections)
        connecting.addCallbacks(request.relay_over, lambda failure: self._refused(request, failure))

    def _refused(self, request: RelayRequest, failure: Failure) -> None:
        if request.gone:
            return
        if not failure.check(ConnectError):
            request.answer_bad_gateway(failure.getErrorMessage())
            return
        self.state.refused()
        if self.state.given_up:
            request.answer_bad_gateway("upstream refuses connections")
            return
        _log.info("upstream refuses connections ({why}); handing the job back and detaching",
                  why=failure.getErrorMessage())
        if request.channel.attachment.hand_back():
            request.call_ended(relayed=False)
        else:
            request.answer_bad_gateway("upstream refuses connections")

    def idle(self, connection: UpstreamConnection) -> None:
        """A connection's job is done and it stays open."""
        self.state.accepted()
        if len(self._idle) < self._keep:
            self._idle.append(connection)
        else:
            connection.transport.loseConnection()

    def close_idle(self) -> None:
        """The worker is stopping: close the kept-alive upstream connections."""
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.transport.loseConnection()

    def gone(self, connection: UpstreamConnection) -> None:
        if connection in self._idle:
            self._idle.remove(connection)

    def lost(self, request: RelayRequest) -> None:
        # The hub went away mid-job: the upstream connection cannot be
        # reused for the rest of that response.
        request.gone = True
        request.call_ended()
        upstream = request._upstream
        if upstream is not None and upstream.relay is request:
            upstream.relay = None
            upstream.transport.abortConnection()


class _Connections(Factory):
    """Builds the upstream connections, for L{UpstreamServer}."""

    noisy = False

    def __init__(self, server: UpstreamServer) -> None:
        self._server = server

    def buildProtocol(self, addr) -> UpstreamConnection:
        connection = UpstreamConnection()
        connection.factory = self._server
        self._server.state.accepted()
        return connection


class _HealthProbe(Protocol):
    """
    One health check: C{GET PATH} on a connection of its own, judged by
    the status line (2xx is healthy).
    """

    def __init__(self, path: bytes, result: Deferred) -> None:
        self._path = path
        self._result = result
        self._read = b""

    def connectionMade(self) -> None:
        self.transport.write(
            b"GET " + self._path + b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )

    def dataReceived(self, data: bytes) -> None:
        self._read += data
        line, found, _ = self._read.partition(b"\r\n")
        if found or len(self._read) > 4096:
            parts = line.split(b" ", 2)
            healthy = len(parts) > 1 and parts[0].startswith(b"HTTP/1.") and parts[1][:1] == b"2"
            self._settle(healthy)
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = None) -> None:
        self._settle(False)

    def _settle(self, healthy: bool) -> None:
        if not self._result.called:
            self._result.callback(healthy)


@implementer(IAdmission)
class UpstreamAdmission:
    """
    A slot attaches only while the upstream accepts connections (or has
    refused them longer than its C{wait}: jobs are then answered 502) and,
    with a health check, while that passes.

    With a health check the upstream is checked every L{HEALTH_INTERVAL}
    seconds all along; when it fails, C{detach_all} is called (the
    worker's wiring detaches every slot, each once its job is done) and
    slots wait here until it passes again.

    :ivar detach_all: called when the health check starts failing.
    """

    per_job = False

    def __init__(self, endpoint: IStreamClientEndpoint, state: UpstreamState,
                 clock: IReactorTime, health: str | None = None) -> None:
        self._endpoint = endpoint
        self._state = state
        self._clock = clock
        self._health = health.encode("ascii") if health else None
        self._healthy = self._health is None
        self._waiting: list[Deferred] = []
        self._probe = None
        self._watch: LoopingCall | None = None
        self._stopped = False
        self.detach_all: Callable[[], object] = lambda: None

    def admit(self) -> Deferred:
        if self._health is not None and self._watch is None and not self._stopped:
            self._watch = LoopingCall(self._check_health)
            self._watch.clock = self._clock
            self._watch.start(HEALTH_INTERVAL, now=True)
        down = self._state.down_since is not None and not self._state.given_up
        if self._healthy and not down:
            return succeed(_Ticket())
        waiting: Deferred = Deferred(lambda d: d in self._waiting and self._waiting.remove(d))
        self._waiting.append(waiting)
        if down:
            self._schedule()
        return waiting

    # Connections refused: probe until one is accepted.

    def _schedule(self) -> None:
        if self._probe is None and not self._stopped:
            self._probe = self._clock.callLater(PROBE_INTERVAL, self._check)

    def _check(self) -> None:
        self._probe = None
        probing = self._endpoint.connect(Factory.forProtocol(Protocol))
        probing.addCallbacks(self._up, self._down)

    def _up(self, probe: Protocol) -> None:
        probe.transport.loseConnection()
        self._state.accepted()
        _log.info("upstream accepts connections again; attaching")
        self._release()

    def _down(self, failure: Failure) -> None:
        self._state.refused()
        if self._state.given_up:
            _log.warn("upstream refused connections for {wait:g}s (--upstream-wait);"
                      " attaching, and answering jobs 502", wait=self._state.wait)
            self._release()
        elif self._waiting:
            self._schedule()

    # The health check.

    def _check_health(self) -> Deferred:
        result: Deferred = Deferred()
        connecting = self._endpoint.connect(
            Factory.forProtocol(lambda: _HealthProbe(self._health, result))
        )
        connecting.addErrback(lambda failure: result.called or result.callback(False))
        result.addTimeout(HEALTH_INTERVAL, self._clock, lambda *_: False)
        result.addCallback(self._health_is)
        return result

    def _health_is(self, healthy: bool) -> None:
        if healthy == self._healthy:
            return
        self._healthy = healthy
        path = self._health.decode("ascii")
        if healthy:
            _log.info("upstream health check {path} passes; attaching", path=path)
            self._release()
        else:
            _log.warn("upstream health check {path} fails; detaching every slot", path=path)
            self.detach_all()

    def _release(self) -> None:
        if not self._healthy:
            return
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(_Ticket())

    def stop(self) -> None:
        self._stopped = True
        if self._watch is not None and self._watch.running:
            self._watch.stop()
        if self._probe is not None and self._probe.active():
            self._probe.cancel()
        self._probe = None
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.cancel()


def parse_upstream(url: str) -> tuple[str, int] | str:
    """
    Read C{--upstream}: C{http://HOST:PORT} is C{(HOST, PORT)}, C{unix:PATH}
    is C{PATH}.

    :raise ValueError: for anything else.
    """
    if url.startswith("unix:"):
        path = url[len("unix:"):]
        if not path:
            raise ValueError(f"--upstream {url!r}: no socket path")
        return path
    try:
        parsed = urlsplit(url)
        port = parsed.port or 80
    except ValueError:
        parsed, port = None, 0
    if parsed is None or parsed.scheme != "http" or not parsed.hostname or (
        parsed.path not in ("", "/") or parsed.query
    ):
        raise ValueError(f"--upstream {url!r}: expected http://HOST:PORT or unix:/path/to.sock")
    return parsed.hostname, port


def upstream_endpoint(reactor, url: str) -> IStreamClientEndpoint:
    """
    The endpoint of C{--upstream} (L{parse_upstream}).
    """
    where = parse_upstream(url)
    if isinstance(where, str):
        return UNIXClientEndpoint(reactor, where)
    return HostnameEndpoint(reactor, *where)


class UpstreamService(Service):
    """
    Closes the kept-alive upstream connections once the worker has
    drained and stops.
    """

    def __init__(self, server: UpstreamServer) -> None:
        self._server = server

    def stopService(self) -> None:
        super().stopService()
        self._server.close_idle()


def sidecar(reactor, url: str, slots: int, wait: float = DEFAULT_UPSTREAM_WAIT,
            health: str | None = None, metrics: WorkerMetrics | None = None,
            ) -> tuple[UpstreamServer, UpstreamAdmission]:
    """
    What a sidecar worker's slots run, and when they may attach.

    :param health: a path on the upstream that answers 2xx while it is
        ready (C{--upstream-health}).
    :param metrics: counts the relayed jobs.
    """
    endpoint = upstream_endpoint(reactor, url)
    state = UpstreamState(reactor, wait)
    return (
        UpstreamServer(endpoint, reactor, state, slots, metrics),
        UpstreamAdmission(endpoint, state, reactor, health),
    )
