"""
Backpressure for WSGI responses on the worker (and the hook that tells a
slot's admission ticket a request arrived).

``twisted.web.wsgi`` writes every chunk an app yields straight to the
connection, without ever asking whether it keeps up; a large response to
a slow consumer then piles up in the worker's memory.  Here the app's
iterable is consumed only as fast as the connection drains: once the
connection's buffer is full, the WSGI thread waits for it to empty before
it takes the next chunk from the app.

This module subclasses Twisted's private ``_WSGIResponse``: twisted.web.wsgi
has no public hook for what is done here (its L{WSGIResource} builds a
``_WSGIResponse`` and nothing else), and the alternative, a WSGI gateway
of pothead's own, would copy its environ, its checks on C{start_response}
and its error handling.  What L{_PromptResponse} relies on is listed in
its docstring and pinned by ``tests/test_twisted_private.py``; every
private Twisted name pothead uses is in ``docs/twisted.md``.
"""

from __future__ import annotations

from threading import Lock
from typing import Any, Callable, Iterable, Iterator

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPushProducer, IReactorFromThreads
from twisted.internet.threads import blockingCallFromThread
from twisted.logger import Logger
from twisted.web.server import NOT_DONE_YET, Request
from twisted.web.wsgi import WSGIResource, _WSGIResponse
from zope.interface import implementer

from pothead.worker.metrics import WorkerMetrics
from pothead.worker.slot_server import UNATTACHED

#: The environ key under which a response's gate reaches the middleware.
GATE_KEY = "pothead.write_gate"

#: The environ key under which the slot's admission ticket reaches it.
TICKET_KEY = "pothead.ticket"

#: Bytes a response may write before it is flow-controlled at all: small
#: answers, the common case, cost no extra reactor round trip.
UNGATED_BYTES = 256 * 1024

_log = Logger()


@implementer(IReactorFromThreads)
class BatchedCalls:
    """
    The reactor as the app's threads see it: calls they hand to the
    reactor thread run there in order, as many in one wake-up as were
    handed over before the reactor got to them.

    A small response takes three such calls (write, finish, "app call
    over"), and each of Twisted's own C{callFromThread} wakes the reactor
    and trades the GIL with the app's thread once; batched, the reactor
    usually wakes once, after the thread is done.  A lone chunk of a
    streamed response still goes out as soon as the reactor is free.

    It is the whole of L{IReactorFromThreads}, and is given as the
    reactor to L{_PromptResponse} and to C{blockingCallFromThread}, which
    use nothing else of it (tests/test_twisted_private.py pins that).
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._lock = Lock()
        self._calls: list[tuple[Callable[..., object], tuple, dict]] = []
        self._scheduled = False

    def callFromThread(self, f: Callable[..., object], *args: object, **kwargs: object) -> None:
        """
        Run C{f(*args, **kwargs)} in the reactor thread, after every call
        handed over before it.
        """
        with self._lock:
            self._calls.append((f, args, kwargs))
            if self._scheduled:
                return
            self._scheduled = True
        self._reactor.callFromThread(self._run)

    def _run(self) -> None:
        with self._lock:
            calls, self._calls = self._calls, []
            self._scheduled = False
        for f, args, kwargs in calls:
            try:
                f(*args, **kwargs)
            except BaseException:
                _log.failure("call from a WSGI thread failed: {f!r}", f=f)


@implementer(IPushProducer)
class WriteGate:
    """
    Registered as the producer of one response, so that it hears when the
    connection is full, and lets the WSGI thread wait for it to drain.

    ``paused`` is set in the reactor thread and read in the WSGI thread;
    a stale read costs at most one chunk more or one wait less.

    ``failed`` is set in the WSGI thread when the app raises, and read in
    the reactor thread once the app call is over: the hand-over of that
    news (L{BatchedCalls}, under its lock) comes after the write.
    """

    def __init__(self, reactor: Any, request: Request) -> None:
        self._reactor = reactor
        self._request = request
        self.paused = False
        #: Whether the app raised (calling it, iterating or closing its
        #: response), or wrote what is not bytes.
        self.failed = False
        self._stopped = False
        self._resumed: Deferred[None] | None = None
        self._registered = False

    # IPushProducer, called in the reactor thread.

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._open()

    def stopProducing(self) -> None:
        self._stopped = True
        self.paused = False
        self._open()

    def _open(self) -> None:
        if self._resumed is not None:
            resumed, self._resumed = self._resumed, None
            resumed.callback(None)

    # Called in the reactor thread on behalf of the WSGI thread.

    def _register(self) -> None:
        if not self._registered and not self._request.finished and not self._stopped:
            # From the next write on, the connection pauses this producer
            # whenever its buffer is full.
            self._request.registerProducer(self, True)
            self._registered = True

    def _unregister(self) -> None:
        if self._registered:
            self._registered = False
            self._request.unregisterProducer()

    def _until_open(self) -> Deferred[None]:
        if not self.paused or self._stopped:
            return succeed(None)
        self._resumed = Deferred()
        return self._resumed

    # Called in the WSGI thread.

    def iterate(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """
        Yield the app's chunks, waiting while the connection is full.
        """
        written = 0
        try:
            try:
                for chunk in chunks:
                    yield chunk
                    written += len(chunk)
                    if written > UNGATED_BYTES and not self._registered:
                        blockingCallFromThread(self._reactor, self._register)
                    if self.paused:
                        blockingCallFromThread(self._reactor, self._until_open)
            finally:
                close = getattr(chunks, "close", None)
                try:
                    if close is not None:
                        close()
                finally:
                    if self._registered:
                        blockingCallFromThread(self._reactor, self._unregister)
        except GeneratorExit:
            # Closed early by twisted.web.wsgi (the request was finished).
            raise
        except BaseException:
            self.failed = True
            raise


class _PromptResponse(_WSGIResponse):
    """
    A WSGI response whose first UNGATED_BYTES are written without the app's
    thread waiting for the reactor to have written them.  Its C{reactor}
    is a L{BatchedCalls}, so a small response's write and finish reach the
    reactor together.

    twisted.web.wsgi makes the thread wait for every write, a round trip
    between threads that costs more than a small response's whole handling;
    writes are still done in order by the reactor, and the app is still
    told at once about a chunk that is not bytes.  Past UNGATED_BYTES every
    write waits again, so a fast app can never queue more than that, and
    L{WriteGate} takes over.

    No public API can do this, so it stays a subclass of twisted.web.wsgi's
    private C{_WSGIResponse}, relying on (each pinned by name in
    tests/test_twisted_private.py):

      - its constructor, C{(reactor, threadpool, application, request)},
        which builds C{environ} (a C{dict} this class adds keys to
        before C{start}) and sets C{started}, C{reactor} and C{request};
      - C{run}, called in the app's thread by C{start} through
        C{threadpool.callInThread}, calling C{self.write} for each chunk
        (C{start_response} returns C{self.write} too), then handing the
        finish to C{self.reactor.callFromThread} and setting C{started};
      - C{write}, the waiting write, used past UNGATED_BYTES;
      - C{started}, read and set in the app's thread: whether the
        status and headers have been handed to the request;
      - C{_sendResponseHeaders()}, called in the reactor thread to put
        the app's status and headers on the request before its first
        write.
    """

    _unwaited = 0

    def __init__(self, reactor: Any, threadpool: Any, application: Any, request: Request,
                 on_ended: Callable[[], None], gate: WriteGate) -> None:
        """
        :param on_ended: called in the reactor thread when the app call is
            over.
        :param gate: the response's gate, told if the app writes what is
            not bytes.
        """
        super().__init__(reactor, threadpool, application, request)
        self.on_ended = on_ended
        self.gate = gate

    def run(self) -> None:
        try:
            super().run()
        finally:
            self.reactor.callFromThread(self.on_ended)

    def write(self, data: bytes) -> None:
        if not isinstance(data, bytes):
            self.gate.failed = True
            raise TypeError(f"WSGI response data must be bytes, not {type(data).__name__}")
        self._unwaited += len(data)
        if self._unwaited > UNGATED_BYTES:
            return super().write(data)

        def prompt_write(started: bool) -> None:
            if not started:
                self._sendResponseHeaders()
            self.request.write(data)

        self.reactor.callFromThread(prompt_write, self.started)
        self.started = True


class FlowControlledWSGIResource(WSGIResource):
    """
    A L{WSGIResource} whose apps are given a L{WriteGate} in their environ,
    for L{flow_controlled} to use, and whose small responses are written
    without a thread round trip per chunk.
    """

    def __init__(self, reactor: Any, threadpool: Any, application: Any,
                 metrics: WorkerMetrics | None = None) -> None:
        """
        :param metrics: counts each job when its app call is over.
        """
        super().__init__(reactor, threadpool, application)
        # Kept here rather than read back from WSGIResource's private
        # attributes.
        self._pool = threadpool
        self._app = application
        self._calls = BatchedCalls(reactor)
        self._metrics = metrics or WorkerMetrics()

    def render(self, request: Request) -> int:
        # A twisted.web channel (the resource served by a Site) has no
        # attachment: it is served as a slot's channel not attached to a hub.
        attachment = getattr(request.channel, "attachment", UNATTACHED)
        gate = WriteGate(self._calls, request)
        metrics = self._metrics
        began = metrics.now()

        def ended() -> None:
            # In the reactor thread, after the response's last write and
            # finish (BatchedCalls keeps their order).  A response whose
            # head never went out (the hub was gone) has no status.
            attachment.app_call_ended()
            begun = getattr(request, "started", True)
            metrics.job_done(request.code if begun else None, began, gate.failed)

        response = _PromptResponse(self._calls, self._pool, self._app, request, ended, gate)
        response.environ[GATE_KEY] = gate
        response.environ[TICKET_KEY] = attachment.ticket
        attachment.app_call_started()
        response.start()
        return NOT_DONE_YET


def flow_controlled(app):
    """
    Wrap a WSGI app so that its response is read only as fast as the
    connection drains, and tell the slot's admission ticket that a request
    arrived.  Both are taken out of the environ first: the app sees the
    environ it would see anywhere else.
    """

    def gated(environ: dict, start_response) -> Iterable[bytes]:
        gate = environ.pop(GATE_KEY, None)
        ticket = environ.pop(TICKET_KEY, None)
        try:
            if ticket is not None:
                ticket.request_received(environ)
            chunks = app(environ, start_response)
        except BaseException:
            if gate is not None:
                gate.failed = True
            raise
        return chunks if gate is None else gate.iterate(chunks)

    return gated
