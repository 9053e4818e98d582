"""
Every private (or meant-for-the-reactor) part of Twisted that pothead
relies on, pinned: each test fails, naming what changed and where pothead
uses it, on a Twisted that changed it.  docs/twisted.md lists them all.

  - twisted.web.wsgi's private ``_WSGIResponse``, subclassed by
    pothead/worker/flow.py (``_PromptResponse``);
  - what twisted.web.wsgi reads of a request, which
    pothead/worker/slot_server.py's ``WSGIRequest`` provides in place of
    twisted.web's ``Request`` (and ``RequestHeaders`` in place of
    ``Headers``);
  - what ``blockingCallFromThread`` and ``_WSGIResponse`` use of their
    reactor, the whole of which flow.py's ``BatchedCalls`` is;
  - a TCP transport's ``doWrite`` called by protocol code, and its
    ``disconnecting`` (pothead/http/sockets.py, ``send_now``);
  - the reactor's private ``_exitSignal`` that twistd reads
    (pothead/exit.py, ``exit_cleanly``);
  - a TCP port's ``socket`` attribute, replaced by
    pothead/hub/listening.py (``_LimitedSocket``), and the port's
    ``stopReading``/``startReading``/``fileno`` that
    pothead/hub/connection_limit.py calls.

Each test carries its own tier: ``unit`` in memory, ``net`` with sockets
on 127.0.0.1, ``process`` with a real twistd.
"""

from __future__ import annotations

import errno
import inspect
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import pytest_twisted
from twisted.application import app
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IReadWriteDescriptor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.internet.threads import blockingCallFromThread
from twisted.scripts import twistd
from twisted.web import wsgi
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest
from twisted.web.server import Request, Site
from twisted.web.test.requesthelper import DummyChannel

from pothead.exit import exit_cleanly
from pothead.http.sockets import send_now
from pothead.worker.body_pipe import BodyPipe
from pothead.worker.flow import BatchedCalls, FlowControlledWSGIResource
from pothead.worker.slot_server import SlotServer, WSGIRequest

unit = pytest.mark.unit
net = pytest.mark.net
process = pytest.mark.process

HOST = IPv4Address("TCP", "127.0.0.1", 8080)
PEER = IPv4Address("TCP", "127.0.0.5", 4040)


def pinned(ok: bool, what: str) -> None:
    """
    Fail, saying which reliance of pothead's this Twisted broke.
    """
    if not ok:
        pytest.fail(f"Twisted changed what pothead relies on: {what} (see docs/twisted.md)",
                    pytrace=False)


class Now:
    """
    A reactor's C{callFromThread} and a thread pool's C{callInThread}
    that run the call at once, recording its name.
    """

    def __init__(self) -> None:
        self.called: list[str] = []

    def callFromThread(self, f, *args, **kwargs) -> None:
        self.called.append("callFromThread")
        f(*args, **kwargs)

    def callInThread(self, f, *args, **kwargs) -> None:
        self.called.append("callInThread")
        f(*args, **kwargs)


def required_positional(function) -> list[str]:
    """The parameters C{function} must be given, but for C{self}."""
    return [
        p.name for p in inspect.signature(function).parameters.values()
        if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ][1:]


def accepts_positional(function, count: int) -> bool:
    """Whether C{function} can be called with C{count} positional arguments after C{self}."""
    parameters = list(inspect.signature(function).parameters.values())[1:]
    if any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return len(required_positional(function)) <= count
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in parameters if p.default is p.empty and p.kind is not p.VAR_KEYWORD]
    return len(required) <= count <= len(positional)


def twisted_request(uri: bytes = b"/") -> Request:
    request = Request(DummyChannel(), False)
    request.method, request.uri, request.path = b"GET", uri, uri
    request.clientproto = b"HTTP/1.1"
    request.prepath, request.postpath = [], [b""]
    return request


# twisted.web.wsgi's _WSGIResponse, subclassed by pothead/worker/flow.py.


@unit
def test_wsgi_response_signatures():
    """
    pothead/worker/flow.py: C{_PromptResponse} subclasses
    C{twisted.web.wsgi._WSGIResponse}, builds it as C{(reactor,
    threadpool, application, request)}, overrides C{run()} and
    C{write(data)}, calls C{_sendResponseHeaders()} and C{start()}.
    """
    response = getattr(wsgi, "_WSGIResponse", None)
    pinned(inspect.isclass(response), "twisted.web.wsgi._WSGIResponse is gone: "
           "pothead/worker/flow.py _PromptResponse subclasses it")
    pinned(accepts_positional(response.__init__, 4),
           f"_WSGIResponse{inspect.signature(response.__init__)} no longer takes "
           "(reactor, threadpool, application, request): flow.py builds it so")
    for name, arguments in (("run", 0), ("write", 1), ("start", 0), ("_sendResponseHeaders", 0)):
        method = getattr(response, name, None)
        pinned(callable(method), f"_WSGIResponse.{name} is gone: flow.py's _PromptResponse uses it")
        pinned(accepts_positional(method, arguments),
               f"_WSGIResponse.{name}{inspect.signature(method)} no longer takes {arguments} "
               "arguments: flow.py's _PromptResponse calls or overrides it so")
    pinned(accepts_positional(response.startResponse, 2),
           "_WSGIResponse.startResponse no longer takes (status, headers)")


@unit
def test_wsgi_response_attributes():
    """
    pothead/worker/flow.py: a new C{_WSGIResponse} has C{started} false,
    the C{reactor} and C{request} it was given, and an C{environ} dict
    (C{render} adds pothead's keys to it before C{start}); C{start} runs
    C{run} through C{threadpool.callInThread}.
    """
    now = Now()
    pool: list = []

    class Pool:
        def callInThread(self, f, *args, **kwargs):
            pool.append(f)

    request = twisted_request()
    response = wsgi._WSGIResponse(now, Pool(), lambda environ, start_response: [], request)
    pinned(getattr(response, "started", None) is False,
           "_WSGIResponse.started is not False when new: _PromptResponse.write reads it")
    pinned(getattr(response, "reactor", None) is now,
           "_WSGIResponse.reactor is not the reactor given: _PromptResponse hands writes to it")
    pinned(getattr(response, "request", None) is request,
           "_WSGIResponse.request is not the request given: _PromptResponse writes to it")
    pinned(isinstance(getattr(response, "environ", None), dict),
           "_WSGIResponse.environ is not a dict: FlowControlledWSGIResource.render adds to it")
    response.start()
    pinned(pool == [response.run],
           "_WSGIResponse.start no longer calls threadpool.callInThread: pothead's AppThreads "
           "(pothead/worker/threads.py) offers nothing else")


@unit
def test_wsgi_response_run_writes_through_self_write():
    """
    pothead/worker/flow.py: C{_WSGIResponse.run} calls the app with
    C{environ} and C{startResponse}, which returns C{self.write}; it
    writes each non-empty chunk through C{self.write} (so that
    C{_PromptResponse.write} is used), hands the finish to
    C{self.reactor.callFromThread} (so that it is batched), and leaves
    C{started} true.
    """
    written: list[bytes] = []
    given_write: list = []

    class Recording(wsgi._WSGIResponse):
        def write(self, data):
            written.append(data)
            if not self.started:
                self.reactor.callFromThread(self._sendResponseHeaders)
            self.started = True

    def app(environ, start_response):
        given_write.append(start_response("200 OK", [("Content-Length", "2")]))
        return [b"a", b"", b"b"]

    now = Now()
    request = twisted_request()
    response = Recording(now, now, app, request)
    response.run()
    pinned(written == [b"a", b"b"],
           f"_WSGIResponse.run no longer writes each chunk through self.write ({written!r}): "
           "_PromptResponse.write would be bypassed")
    pinned(len(given_write) == 1 and getattr(given_write[0], "__func__", None) is Recording.write,
           "start_response no longer returns self.write: an app's write() would bypass "
           "_PromptResponse.write")
    pinned(now.called.count("callFromThread") == 2,
           f"_WSGIResponse.run no longer hands its finish to self.reactor.callFromThread "
           f"({now.called}): BatchedCalls would not see it")
    pinned(request.finished == 1, "_WSGIResponse.run's finish did not finish the request")
    pinned(response.started is True, "_WSGIResponse.run no longer leaves started true")


@unit
def test_send_response_headers_sets_status_and_headers():
    """
    pothead/worker/flow.py: C{_PromptResponse}'s first write calls
    C{_sendResponseHeaders()} in the reactor thread, which must put the
    status and headers given to C{start_response} on the request (but for
    C{Server} and C{Date}), without writing.
    """
    request = twisted_request()
    now = Now()
    response = wsgi._WSGIResponse(now, now, lambda e, s: [], request)
    response.startResponse("201 Made", [("X-One", "1"), ("Server", "app"), ("X-One", "2")])
    response._sendResponseHeaders()
    pinned((request.code, request.code_message) == (201, b"Made"),
           "_sendResponseHeaders no longer sets the status on the request")
    pinned(request.responseHeaders.getRawHeaders(b"x-one") == [b"1", b"2"],
           "_sendResponseHeaders no longer adds the app's headers to request.responseHeaders")
    pinned(request.responseHeaders.getRawHeaders(b"server") is None,
           "_sendResponseHeaders now lets the app set Server")
    pinned(request.startedWriting == 0, "_sendResponseHeaders now writes")


@unit
def test_prompt_response_end_to_end():
    """
    pothead/worker/flow.py: the whole of C{_PromptResponse} on a
    twisted.web request: a small response written without waiting, in
    order, then finished; the environ carries pothead's keys.
    """
    seen: list[dict] = []

    def app(environ, start_response):
        seen.append(dict(environ))
        start_response("200 OK", [("Content-Length", "11")])
        return [b"hello ", b"world"]

    now = Now()
    request = twisted_request()
    channel = request.channel
    FlowControlledWSGIResource(now, now, app).render(request)
    written = channel.transport.written.getvalue()
    pinned(written.endswith(b"\r\n\r\nhello world") and request.finished == 1,
           f"_PromptResponse no longer writes and finishes ({written!r})")
    pinned("pothead.write_gate" in seen[0], "the environ _PromptResponse added to was not the app's")


# BatchedCalls as the reactor of _WSGIResponse and blockingCallFromThread.


@unit
def test_blocking_call_from_thread_uses_only_call_from_thread():
    """
    pothead/worker/flow.py: C{WriteGate} calls C{blockingCallFromThread}
    with a L{BatchedCalls} as its reactor, which has C{callFromThread}
    and nothing else (L{IReactorFromThreads}).
    """
    class OnlyCallFromThread:
        def callFromThread(self, f, *args, **kwargs):
            f(*args, **kwargs)

    result: list = []
    thread = threading.Thread(
        target=lambda: result.append(blockingCallFromThread(OnlyCallFromThread(), lambda: 42)))
    thread.start()
    thread.join(10)
    pinned(result == [42], "blockingCallFromThread needs more of its reactor than callFromThread: "
           "flow.py gives it a BatchedCalls")
    calls = BatchedCalls(OnlyCallFromThread())
    pinned(set(dir(calls)) >= {"callFromThread"}, "BatchedCalls lost callFromThread")


# WSGIRequest in place of twisted.web's Request, for twisted.web.wsgi.

#: What pothead/worker/slot_server.py's WSGIRequest provides for
#: twisted.web.wsgi, as twisted.web.server.Request would: read (or, with
#: " =", set) by it.
WSGI_READS = {
    "prepath", "postpath", "uri", "method", "clientproto", "content",
    "getClientAddress", "getHeader", "getRequestHostname", "getHost", "isSecure",
    "notifyFinish", "requestHeaders", "requestHeaders.getAllRawHeaders",
    "defaultContentType =",
    "setResponseCode", "responseHeaders", "write", "finish", "loseConnection",
}


class Recorder:
    """
    Stands in for an object, recording the name of every attribute read
    or set through it.
    """

    def __init__(self, target: object, seen: set[str], prefix: str = "") -> None:
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_seen", seen)
        object.__setattr__(self, "_prefix", prefix)

    def __getattr__(self, name: str):
        if not hasattr(self._target, name):
            self._seen.add(f"{self._prefix}{name} (missing)")
            raise AttributeError(f"{type(self._target).__name__} has no {name!r}")
        self._seen.add(self._prefix + name)
        value = getattr(self._target, name)
        if name == "requestHeaders":
            return Recorder(value, self._seen, "requestHeaders.")
        return value

    def __setattr__(self, name: str, value: object) -> None:
        self._seen.add(f"{self._prefix}{name} =")
        setattr(self._target, name, value)


def wsgi_request(data: bytes = b"GET /p?q=1 HTTP/1.1\r\nHost: example.com:8080\r\n\r\n"):
    """
    A WSGIRequest read from C{data} by a slot, and the transport its
    response is written to.
    """
    requests: list[WSGIRequest] = []

    class Keep:
        def render(self, request):
            requests.append(request)

    transport = StringTransport(hostAddress=HOST, peerAddress=PEER)
    channel = SlotServer(Keep(), Clock()).buildProtocol(PEER)
    channel.makeConnection(transport)
    channel.dataReceived(data)
    return requests[0], transport


def wsgi_reads(app) -> set[str]:
    """What twisted.web.wsgi reads of a WSGIRequest while serving C{app}."""
    seen: set[str] = set()
    request, _ = wsgi_request()
    now = Now()
    try:
        wsgi._WSGIResponse(now, now, app, Recorder(request, seen)).start()
    except AttributeError:
        # Reported by name by the caller, if a missing name is the cause.
        if not any(name.endswith("(missing)") for name in seen):
            raise
    return seen


def answers(environ, start_response):
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]


def fails_at_once(environ, start_response):
    raise RuntimeError("before the response")


def fails_midway(environ, start_response):
    start_response("200 OK", [])
    yield b"part"
    raise RuntimeError("after the response started")


@unit
@pytest.mark.parametrize("app", [answers, fails_at_once, fails_midway])
def test_wsgi_reads_what_wsgi_request_provides(app):
    """
    pothead/worker/slot_server.py: twisted.web.wsgi reads of a request
    only what C{WSGIRequest} provides (L{WSGI_READS}), each a public part
    of twisted.web's C{Request} (L{IRequest}, or its documented
    attributes), and of C{requestHeaders} only C{getAllRawHeaders}, which
    C{RequestHeaders} provides.
    """
    seen = wsgi_reads(app)
    pinned(seen <= WSGI_READS,
           f"twisted.web.wsgi now reads {sorted(seen - WSGI_READS)} of its request: "
           "pothead/worker/slot_server.py WSGIRequest (or RequestHeaders) must provide it")
    twisted_web = set(IRequest.names(all=True)) | set(dir(twisted_request()))
    for name in WSGI_READS:
        base = name.split(".")[0].rstrip(" =")
        pinned(not base.startswith("_") and base in twisted_web,
               f"{base} is no public part of twisted.web.server.Request any more")
    pinned(callable(getattr(Headers, "getAllRawHeaders", None)),
           "Headers.getAllRawHeaders is gone: RequestHeaders stands in for it")


@unit
def test_every_read_is_exercised():
    """
    The apps above make twisted.web.wsgi read all of L{WSGI_READS}: a
    name it no longer reads can be dropped from WSGIRequest.
    """
    seen = set().union(*(wsgi_reads(app) for app in (answers, fails_at_once, fails_midway)))
    pinned(seen == WSGI_READS, f"twisted.web.wsgi no longer reads {sorted(WSGI_READS - seen)}")


def environ_of(factory, data: bytes) -> dict:
    """The environ an app served by C{factory} is called with for C{data}."""
    environs: list[dict] = []

    def app(environ, start_response):
        environs.append(environ)
        start_response("200 OK", [])
        return [b""]

    now = Now()
    transport = StringTransport(hostAddress=HOST, peerAddress=PEER)
    channel = factory(wsgi.WSGIResource(now, now, app)).buildProtocol(PEER)
    channel.makeConnection(transport)
    channel.dataReceived(data)
    environ = environs[0]
    return {key: value for key, value in environ.items() if key not in ("wsgi.input", "wsgi.errors")}


@unit
@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
    b"GET /a/b%20c/?x=1&y=%2F HTTP/1.1\r\nHost: [::1]:8080\r\nAccept: a\r\n"
    b"X-Many: 1\r\nx-many: 2\r\nUser-Agent: t\r\n\r\n",
    b"POST /form HTTP/1.0\r\nHost: example.com:81\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 3\r\n\r\nabc",
])
def test_environ_same_as_from_twisted_web(data):
    """
    pothead/worker/slot_server.py: twisted.web.wsgi builds the same
    environ from a C{WSGIRequest} as from twisted.web's own request for
    the same bytes (C{wsgi.input} and C{wsgi.errors} aside).
    """
    ours = environ_of(lambda resource: SlotServer(resource, Clock()), data)
    theirs = environ_of(lambda resource: Site(resource, timeout=None), data)
    differ = {k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k)}
    pinned(not differ, "twisted.web.wsgi's environ from a WSGIRequest differs from twisted.web's: "
           + ", ".join(f"{k}: {ours.get(k)!r} != {theirs.get(k)!r}" for k in sorted(differ)))


@unit
def test_wsgi_input_reads_a_body_pipe():
    """
    pothead/worker/body_pipe.py: twisted.web.wsgi's C{wsgi.input} reads a
    request's C{content}, here a L{BodyPipe}, only as a file is read.
    """
    pipe = BodyPipe(lambda: None, lambda: None)
    pipe.write(b"one\ntwo\nthree\nfour\nfive")
    pipe.end()
    stream = wsgi._InputStream(pipe)
    got = [stream.read(2), stream.readline(), stream.readline(2), stream.readlines(1),
           list(iter(stream)), stream.read(), stream.read(None)]
    pinned(got == [b"on", b"e\n", b"tw", [b"o\n"], [b"three\n", b"four\n", b"five"], b"", b""],
           f"twisted.web.wsgi's wsgi.input reads BodyPipe otherwise: {got!r}")


# The reactor's _exitSignal, read by twistd: pothead/exit.py.


@unit
def test_reactor_records_the_exit_signal():
    """
    pothead/exit.py: the reactor's SIGTERM handler records the signal in
    C{_exitSignal} (and stops the reactor), which C{exit_cleanly} clears.
    """
    reactor_type = type(reactor)
    pinned(hasattr(reactor_type, "_exitSignal"),
           f"{reactor_type.__name__} has no _exitSignal: pothead/exit.py clears it")
    handler = getattr(reactor_type, "sigTerm", None)
    pinned(callable(handler), f"{reactor_type.__name__}.sigTerm is gone")
    fake = object.__new__(reactor_type)
    fake.callFromThread = lambda *a, **kw: None
    handler(fake, signal.SIGTERM, None)
    pinned(fake._exitSignal == signal.SIGTERM,
           "the reactor's SIGTERM handler no longer sets _exitSignal")
    exit_cleanly(fake)
    pinned(fake._exitSignal is None, "exit_cleanly did not clear _exitSignal")


@unit
def test_twistd_reads_exit_signal(monkeypatch):
    """
    pothead/exit.py: twistd's runner copies the reactor's C{_exitSignal}
    once the reactor stops (C{ApplicationRunner.startReactor}), and
    C{twistd.runApp} re-raises it when it is not None.
    """
    monkeypatch.setattr(app, "runReactorWithLogging", lambda *args: None)
    for signalled, cleared in ((signal.SIGTERM, False), (signal.SIGTERM, True)):
        fake = object.__new__(type(reactor))
        fake._exitSignal = signalled
        if cleared:
            exit_cleanly(fake)

        class Runner:
            config = {}
            profiler = None

        runner = Runner()
        app.ApplicationRunner.startReactor(runner, fake, None, None)
        expected = None if cleared else signalled
        pinned(getattr(runner, "_exitSignal", "missing") == expected,
               "twisted.application.app.ApplicationRunner.startReactor no longer copies "
               "reactor._exitSignal to the runner's _exitSignal")
    source = inspect.getsource(twistd.runApp)
    pinned("_exitSignal" in source and "_exitWithSignal" in source,
           "twisted.scripts.twistd.runApp no longer re-raises runner._exitSignal")


TAC = textwrap.dedent("""
    import os
    from twisted.application.service import Application, Service
    from twisted.internet import reactor
    from twisted.logger import Logger
    from pothead.exit import exit_cleanly

    class Stops(Service):
        def startService(self):
            super().startService()
            reactor.callWhenRunning(Logger().info, "pothead-test running")

        def stopService(self):
            super().stopService()
            if os.environ.get("CLEAN"):
                exit_cleanly(reactor)

    application = Application("exit")
    Stops().setServiceParent(application)
""")


def twistd_exit_status(tac: Path, clean: bool) -> tuple[int, str]:
    """Start twistd on C{tac}, SIGTERM it once running, and return its exit status."""
    twistd_script = str(Path(sys.executable).parent / "twistd")
    env = {**os.environ, "CLEAN": "1" if clean else ""}
    with subprocess.Popen([twistd_script, "-n", "--pidfile=", "-l", "-", "-y", str(tac)],
                          cwd=tac.parent, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT) as child:
        output = b""
        deadline = time.monotonic() + 20
        while b"pothead-test running" not in output and time.monotonic() < deadline:
            if select.select([child.stdout], [], [], 0.1)[0]:
                chunk = os.read(child.stdout.fileno(), 65536)
                if not chunk:
                    break
                output += chunk
        child.send_signal(signal.SIGTERM)
        try:
            rest, _ = child.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            child.kill()
            rest, _ = child.communicate()
        return child.returncode, (output + rest).decode(errors="replace")


@process
def test_twistd_exit_status_after_sigterm(tmp_path):
    """
    pothead/exit.py: a real twistd stopped by SIGTERM exits 0 when
    C{exit_cleanly} ran, and with the signal's status when it did not.
    """
    tac = tmp_path / "exit.tac"
    tac.write_text(TAC)
    status, output = twistd_exit_status(tac, clean=True)
    pinned(status == 0, f"twistd exited {status} after exit_cleanly:\n{output}")
    status, output = twistd_exit_status(tac, clean=False)
    pinned(status == -signal.SIGTERM, f"twistd exited {status} after SIGTERM without "
           f"exit_cleanly (the test's premise):\n{output}")


# A TCP transport's doWrite, called by protocol code: pothead/http/sockets.py.


class Listener:
    """A plain listening socket on 127.0.0.1, read without the reactor."""

    def __init__(self) -> None:
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.peer: socket.socket | None = None

    async def connect(self) -> Protocol:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port, timeout=5)
        protocol = await connectProtocol(endpoint, Protocol())
        self.socket.settimeout(5)
        self.peer, _ = self.socket.accept()
        return protocol

    def received(self, timeout: float, size: int = 65536) -> bytes:
        self.peer.settimeout(timeout)
        try:
            return self.peer.recv(size)
        except TimeoutError:
            return b""

    def close(self) -> None:
        if self.peer is not None:
            self.peer.close()
        self.socket.close()


async def until(condition, what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}", pytrace=False)
        await deferLater(reactor, 0.01, lambda: None)


@net
@pytest_twisted.ensureDeferred
async def test_tcp_do_write_sends_what_write_buffered():
    """
    pothead/http/sockets.py: C{send_now} calls a TCP transport's
    C{doWrite} from protocol code; it must send, at once and without
    raising, what C{write} buffered, and return None; C{disconnecting}
    says whether C{loseConnection} was called.
    """
    listener = Listener()
    try:
        protocol = await listener.connect()
        transport = protocol.transport
        pinned(IReadWriteDescriptor.providedBy(transport),
               "a TCP transport no longer provides IReadWriteDescriptor: send_now skips it")
        pinned(not transport.disconnecting, "a new TCP transport's disconnecting is true")
        transport.write(b"buffered ")
        transport.write(b"twice")
        result = transport.doWrite()
        pinned(result is None, f"TCP transport doWrite returned {result!r} on success")
        got = b""
        while len(got) < len(b"buffered twice"):
            chunk = listener.received(5)
            if not chunk:
                break
            got += chunk
        pinned(got == b"buffered twice",
               f"TCP transport doWrite, called directly, did not send what write buffered ({got!r})")
        pinned(transport.doWrite() is None, "doWrite with nothing buffered is not a no-op")
        transport.loseConnection()
        pinned(bool(transport.disconnecting), "loseConnection no longer sets disconnecting: "
               "send_now would call doWrite on a closing connection")
    finally:
        listener.close()


@net
@pytest_twisted.ensureDeferred
async def test_tcp_do_write_keeps_what_the_socket_cannot_take():
    """
    pothead/http/sockets.py: what one direct C{doWrite} cannot send stays
    buffered, in order, and the reactor sends it.
    """
    listener = Listener()
    try:
        protocol = await listener.connect()
        message = bytes(range(256)) * (16 * 1024 * 1024 // 256)
        protocol.transport.write(message)
        pinned(protocol.transport.doWrite() is None, "doWrite on a full socket returned an error")
        received = bytearray(listener.received(5))
        pinned(0 < len(received) < len(message), f"one doWrite sent {len(received)} bytes")
        listener.peer.setblocking(False)

        def drain() -> bool:
            try:
                while chunk := listener.peer.recv(1 << 20):
                    received.extend(chunk)
            except BlockingIOError:
                pass
            return len(received) >= len(message)

        await until(drain, "the reactor to send the rest", timeout=30)
        pinned(received == message, "what doWrite left was not sent in order by the reactor")
        protocol.transport.loseConnection()
    finally:
        listener.close()


@net
@pytest_twisted.ensureDeferred
async def test_send_now_on_a_tcp_transport():
    """
    pothead/http/sockets.py: C{send_now} itself, as the server uses it.
    """
    listener = Listener()
    try:
        protocol = await listener.connect()
        protocol.transport.write(b"now")
        send_now(protocol.transport)
        pinned(listener.received(5) == b"now", "send_now did not send at once")
        protocol.transport.loseConnection()
    finally:
        listener.close()


# A TCP port's socket attribute: pothead/hub/listening.py and connection_limit.py.


class Refusing:
    """A listening socket whose accept says "nothing waiting" while C{refuse} is set."""

    def __init__(self, sock: socket.socket) -> None:
        self._socket = sock
        self.refuse = True
        self.asked = 0

    def accept(self):
        self.asked += 1
        if self.refuse:
            raise BlockingIOError(errno.EAGAIN, "refused by the test")
        return self._socket.accept()

    def __getattr__(self, name: str):
        return getattr(self._socket, name)


@net
@pytest_twisted.ensureDeferred
async def test_tcp_port_accepts_through_its_socket_attribute():
    """
    pothead/hub/listening.py: C{Listener} replaces a TCP port's C{socket}
    with a C{_LimitedSocket}; the port must accept through that attribute,
    take C{EAGAIN} from it as "nothing waiting" (quietly), and try again
    when the listening socket is next readable.  pothead/hub/
    connection_limit.py calls the port's C{stopReading}, C{startReading}
    and C{fileno}.
    """
    built: list = []

    class Counting(Factory):
        def buildProtocol(self, addr):
            built.append(addr)
            return Protocol()

    port = reactor.listenTCP(0, Counting(), interface="127.0.0.1")
    try:
        for name in ("stopReading", "startReading", "fileno"):
            pinned(callable(getattr(port, name, None)),
                   f"a TCP port has no {name}: pothead/hub/connection_limit.py calls it")
        pinned(isinstance(getattr(port, "socket", None), socket.socket),
               "a TCP port's socket attribute is gone: pothead/hub/listening.py replaces it")
        refusing = Refusing(port.socket)
        port.socket = refusing
        client = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=5)
        try:
            await until(lambda: refusing.asked > 0, "the port to accept through its socket attribute")
            port.stopReading()
            pinned(not built, "the port accepted around its socket attribute")
            refusing.refuse = False
            port.startReading()
            await until(lambda: built, "the port to accept once its socket lets it")
        finally:
            client.close()
    finally:
        await port.stopListening()
