"""
The sidecar worker (--upstream): each job relayed to a local HTTP server
and its response back, as the server sent it, through a real hub on
127.0.0.1.
"""

from __future__ import annotations

import hashlib
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import DeferredList
from twisted.internet.endpoints import TCP4ServerEndpoint, UNIXServerEndpoint, clientFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread
from twisted.web.resource import Resource
from twisted.web.server import Site

from pothead.worker.attach_client import WorkerSlot
from pothead.worker.service import HubOffers
from pothead.worker.upstream import sidecar
from tests.harness import wait_for
from tests.loopback import start_hub


def exchange(port: int, request: bytes, timeout: float = 10.0) -> bytes:
    """Send C{request} on a fresh connection and read until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                # Cut off: what came before the reset is the answer.
                chunk = b""
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


async def fetch(port: int, path: bytes, method: bytes = b"GET") -> bytes:
    """A request without a body, on a connection of its own, in a thread."""
    return await deferToThread(
        exchange, port, method + b" " + path + b" HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n"
    )


def head_lines(response: bytes) -> list[bytes]:
    """The status line and header lines of C{response}, without Date or framing."""
    head = response.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    skip = (b"date:", b"connection:", b"transfer-encoding:")
    return [line for line in head if not line.lower().startswith(skip)]


class Canned(Protocol):
    """An upstream that answers each connection's first request with fixed bytes."""

    def dataReceived(self, data: bytes) -> None:
        self.factory.requests.append(data)
        if b"\r\n\r\n" in data and not self.factory.answered.get(self, False):
            self.factory.answered[self] = True
            self.transport.write(self.factory.answer)
            if self.factory.close_after:
                self.transport.loseConnection()

    def connectionMade(self) -> None:
        self.factory.connections += 1


def canned(answer: bytes, close_after: bool = False) -> Factory:
    factory = Factory.forProtocol(Canned)
    factory.answer = answer
    factory.close_after = close_after
    factory.requests = []
    factory.answered = {}
    factory.connections = 0
    return factory


class Echo(Resource):
    """A twisted.web upstream: echoes the body's length and hash, or streams a large body."""

    isLeaf = True

    def render_POST(self, request):
        body = request.content.read()
        request.setHeader(b"X-Length", b"%d" % len(body))
        return hashlib.sha256(body).hexdigest().encode()

    def render_GET(self, request):
        if request.path == b"/big":
            return b"x" * (3 * 1024 * 1024)
        if request.path == b"/empty":
            request.setResponseCode(204)
            return b""
        if request.path == b"/unchanged":
            request.setResponseCode(304)
            request.setHeader(b"ETag", b'"v1"')
            return b""
        request.responseHeaders.addRawHeader(b"X-Repeated", b"one")
        request.responseHeaders.addRawHeader(b"X-Repeated", b"two")
        return b"hello " + request.path


async def listen(factory) -> int:
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    return port


class Sidecar:
    """
    A hub with a sidecar worker in front of an upstream, in this reactor.
    The hub adds no Server-Timing (C{--no-server-timing}): what the
    consumer gets is compared with what the upstream sent, byte for byte.
    """

    async def start(self, upstream_url: str, slots: int = 2, wait: float = 30.0,
                    health: str | None = None) -> None:
        self.hub = await start_hub(server_timing=False)
        self.server, admission = sidecar(reactor, upstream_url, slots, wait, health)
        self.slots = [
            WorkerSlot(self.server, "default", None, f"side/{i}", 3.0, reactor, admission)
            for i in range(slots)
        ]
        self.offers = HubOffers(clientFromString(reactor, self.hub.worker_endpoint), self.slots,
                                reactor)
        self.offers.startService()
        self.admission = admission
        admission.detach_all = lambda: [
            client.drain() for slot in self.slots for client in list(slot.clients)
        ]

    async def stop(self) -> None:
        self.admission.stop()
        await DeferredList([slot.drain() for slot in self.slots])
        await self.offers.stopService()
        self.server.close_idle()
        await self.hub.stop()


@pytest_twisted.async_yield_fixture
async def upstreams():
    ports = []
    yield ports
    for port in ports:
        await port.stopListening()


@pytest.mark.net
@pytest_twisted.ensureDeferred
async def test_the_consumer_sees_what_the_upstream_sent(upstreams):
    answer = (
        b"HTTP/1.1 201 Very Fine\r\nX-B: b\r\nx-a: 1\r\nX-A: 2\r\nServer: canned\r\n"
        b"Content-Length: 5\r\n\r\nhello"
    )
    factory = canned(answer)
    port = await listen(factory)
    upstreams.append(port)
    side = Sidecar()
    await side.start(f"http://127.0.0.1:{port.getHost().port}")
    try:
        await wait_for(lambda: side.hub.pool.idle == 2, what="the sidecar's slots")
        through = await fetch(side.hub.consumer_port, b"/x")
        assert head_lines(through) == head_lines(answer)
        assert through.endswith(b"\r\n\r\nhello")
        sent = factory.requests[0]
        assert sent.startswith(b"GET /x HTTP/1.1\r\n") and b"\r\nHost: svc\r\n" in sent
    finally:
        await side.stop()


class OneShot(Protocol):
    """
    Answers a connection's first request and keeps it open, then closes it
    unanswered when a second comes, as a server whose idle timeout struck
    as that request went out.
    """

    def connectionMade(self) -> None:
        self.factory.connections += 1
        self.served = False

    def dataReceived(self, data: bytes) -> None:
        if self.served:
            self.transport.loseConnection()
            return
        self.served = True
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


@pytest.mark.net
@pytest_twisted.ensureDeferred
async def test_a_kept_alive_connection_closed_under_a_request_is_retried_once(upstreams):
    factory = Factory.forProtocol(OneShot)
    factory.connections = 0
    port = await listen(factory)
    upstreams.append(port)
    side = Sidecar()
    await side.start(f"http://127.0.0.1:{port.getHost().port}", slots=1)
    try:
        await wait_for(lambda: side.hub.pool.idle == 1, what="the sidecar's slot")
        for path in (b"/one", b"/two", b"/three"):
            answer = await deferToThread(
                exchange, side.hub.consumer_port,
                b"GET " + path + b" HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"ok")
        assert factory.connections == 3
    finally:
        await side.stop()


@pytest.mark.net
@pytest_twisted.ensureDeferred
async def test_interim_responses_are_skipped_and_the_final_one_relayed(upstreams):
    """
    A server's 103 Early Hints (or 100 Continue) is not relayed, as the hub
    skips a worker's: the consumer gets the final response, whole.
    """
    final = b"HTTP/1.1 200 OK\r\nX-Final: yes\r\nContent-Length: 2\r\n\r\nok"
    factory = canned(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
                     b"HTTP/1.1 100 Continue\r\n\r\n" + final)
    port = await listen(factory)
    upstreams.append(port)
    side = Sidecar()
    await side.start(f"http://127.0.0.1:{port.getHost().port}", slots=1)
    try:
        await wait_for(lambda: side.hub.pool.idle == 1, what="the sidecar's slot")
        through = await fetch(side.hub.consumer_port, b"/x")
        assert head_lines(through) == head_lines(final)
        assert through.endswith(b"\r\n\r\nok") and b"103" not in through
    finally:
        await side.stop()


@pytest.mark.net
@pytest_twisted.ensureDeferred
async def test_bodies_both_ways_head_204_304_over_one_kept_alive_connection(upstreams):
    counting = Site(Echo())
    connections = []
    build = counting.buildProtocol
    counting.buildProtocol = lambda addr: connections.append(addr) or build(addr)
    port = await listen(counting)
    upstreams.append(port)
    side = Sidecar()
    await side.start(f"http://127.0.0.1:{port.getHost().port}", slots=1)
    try:
        await wait_for(lambda: side.hub.pool.idle == 1, what="the sidecar's slot")
        consumer = side.hub.consumer_port
        body = bytes(range(256)) * 8192  # 2 MiB
        posted = await deferToThread(
            exchange, consumer,
            b"POST /echo HTTP/1.1\r\nHost: svc\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
            % len(body) + body)
        assert b"\r\nX-Length: %d\r\n" % len(body) in posted
        assert posted.endswith(hashlib.sha256(body).hexdigest().encode())
        big = await fetch(consumer, b"/big")
        assert big.split(b"\r\n\r\n", 1)[1] == b"x" * (3 * 1024 * 1024)
        head = await fetch(consumer, b"/big", b"HEAD")
        assert head.endswith(b"\r\n\r\n") and b"Content-Length: 3145728" in head
        empty = await fetch(consumer, b"/empty")
        assert empty.startswith(b"HTTP/1.1 204 ")
        unchanged = await fetch(consumer, b"/unchanged")
        assert unchanged.startswith(b"HTTP/1.1 304 ") and b'\r\nETag: "v1"\r\n' in unchanged
        assert unchanged.endswith(b"\r\n\r\n")
        repeated = await fetch(consumer, b"/r")
        assert b"\r\nX-Repeated: one\r\nX-Repeated: two\r\n" in repeated
        # One slot, one kept-alive upstream connection for all of them.
        assert len(connections) == 1
    finally:
        await side.stop()


@pytest.mark.net
@pytest_twisted.ensureDeferred
async def test_an_upstream_that_closes_mid_response_cuts_the_consumer_off(upstreams):
    factory = canned(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part", close_after=True)
    port = await listen(factory)
    upstreams.append(port)
    side = Sidecar()
    await side.start(f"http://127.0.0.1:{port.getHost().port}", slots=1)
    try:
        await wait_for(lambda: side.hub.pool.idle == 1, what="the sidecar's slot")
        through = await fetch(side.hub.consumer_port, b"/x")
        # Cut off as from a WSGI app that fails mid-body: the hub resets
        # the consumer's connection (a reset may take unread bytes with
        # it), or, had nothing been relayed yet, answers 502; never the
        # whole 100 bytes.
        assert through == b"" or through.startswith((b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 502 "))
        assert len(through.partition(b"\r\n\r\n")[2]) < 100
        # The slot attaches again and serves the next job.
        factory.answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        factory.close_after = False
        await wait_for(lambda: side.hub.pool.idle == 1, what="the slot back")
        again = await fetch(side.hub.consumer_port, b"/y")
        assert again.endswith(b"\r\n\r\nok")
    finally:
        await side.stop()


@pytest.mark.net
@pytest_twisted.ensureDeferred
async def test_an_upstream_down_then_back_loses_no_request(upstreams):
    """
    The upstream refuses connections: the jobs are handed back and wait
    at the hub while the slots are detached; when it listens again they
    are served, none fails.
    """
    number = free_port()  # nothing listens on it, for now
    side = Sidecar()
    await side.start(f"http://127.0.0.1:{number}", slots=2)
    try:
        await wait_for(lambda: side.hub.pool.idle == 2, what="the sidecar's slots")
        requests = [
            deferToThread(exchange, side.hub.consumer_port,
                          b"GET /n%d HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n" % n)
            for n in range(4)
        ]
        await wait_for(lambda: side.hub.pool.idle == 0 and side.hub.pool.queued == 4,
                       what="the jobs handed back and the slots detached")
        port = await TCP4ServerEndpoint(reactor, number, interface="127.0.0.1").listen(
            Site(Echo()))
        upstreams.append(port)
        results = await DeferredList(requests, fireOnOneErrback=True, consumeErrors=True)
        bodies = [result.split(b"\r\n\r\n", 1)[1] for _, result in results]
        assert sorted(bodies) == [b"hello /n%d" % n for n in range(4)]
    finally:
        await side.stop()


@pytest.mark.net
@pytest_twisted.ensureDeferred
async def test_an_upstream_down_past_the_wait_is_answered_502(upstreams):
    number = free_port()
    side = Sidecar()
    await side.start(f"http://127.0.0.1:{number}", slots=1, wait=0.5)
    try:
        await wait_for(lambda: side.hub.pool.idle == 1, what="the sidecar's slot")
        through = await fetch(side.hub.consumer_port, b"/x")
        assert through.startswith(b"HTTP/1.1 502 ")
    finally:
        await side.stop()


@pytest.mark.unit
def test_upstream_urls():
    from pothead.worker.upstream import upstream_endpoint

    assert upstream_endpoint(reactor, "unix:/run/app.sock")._path == "/run/app.sock"
    for bad in ("https://x:1", "ftp://x", "http://", "http://x:1/path", "unix:"):
        with pytest.raises(ValueError):
            upstream_endpoint(reactor, bad)




class StdlibHandler(BaseHTTPRequestHandler):
    """The standard library's http.server, HTTP/1.1 with lengths."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = b"stdlib " + self.path.encode()
        self.send_response(200, "Fine Indeed")
        self.send_header("X-Twice", "a")
        self.send_header("x-twice", "b")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        digest = hashlib.sha256(body).hexdigest().encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(digest)))
        self.end_headers()
        self.wfile.write(digest)

    def log_message(self, *args) -> None:
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ready(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listening on {port} after {timeout}s")


@pytest.fixture
def stdlib_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), StdlibHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(10)


@pytest.fixture
def gunicorn_server():
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1",
         "--log-level", "warning", "tests.apps.flask_app:create_app()"],
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        ready(port)
        yield port
    finally:
        process.terminate()
        process.wait(10)


REQUESTS = {
    "stdlib": [
        b"GET /a?b=c HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n",
        b"POST /p HTTP/1.1\r\nHost: svc\r\nConnection: close\r\nContent-Length: 300000\r\n\r\n"
        + b"z" * 300000,
    ],
    "gunicorn": [
        b"GET / HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n",
        b"GET /redirect HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n",
        b"GET /cookies HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n",
        b"GET /missing HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n",
        b"GET /stream HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n",
        b"HEAD / HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n",
        b"POST /upload HTTP/1.1\r\nHost: svc\r\nConnection: close\r\nContent-Length: 200000\r\n"
        b"Content-Type: application/octet-stream\r\n\r\n" + b"u" * 200000,
    ],
}


def dechunked(response: bytes) -> bytes:
    """The body of C{response}, its chunks joined if it was chunked."""
    head, _, body = response.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" not in head.lower():
        return body
    out = b""
    while True:
        size, _, body = body.partition(b"\r\n")
        length = int(size.split(b";")[0], 16)
        if not length:
            return out
        out, body = out + body[:length], body[length + 2:]


@pytest.mark.net
@pytest.mark.parametrize("kind", ["stdlib", "gunicorn"])
@pytest_twisted.ensureDeferred
async def test_a_sidecar_in_front_of_a_real_server_answers_as_the_server_does(
    kind, request
):
    """
    Each request sent to the server directly and through the hub and a
    sidecar worker: the same status line, the same fields in order and
    case (Date, and the framing fields each hop sets, aside), the same body.
    """
    port = request.getfixturevalue(f"{kind}_server")
    side = Sidecar()
    await side.start(f"http://127.0.0.1:{port}", slots=2)
    try:
        await wait_for(lambda: side.hub.pool.idle == 2, what="the sidecar's slots")
        for raw in REQUESTS[kind]:
            direct = await deferToThread(exchange, port, raw)
            through = await deferToThread(exchange, side.hub.consumer_port, raw)
            assert head_lines(through) == head_lines(direct), raw[:40]
            assert dechunked(through) == dechunked(direct), raw[:40]
    finally:
        await side.stop()


class Health(Resource):
    """An upstream whose /health answers as the test says; anything else is served."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.healthy = False

    def render_GET(self, request):
        if request.path == b"/health":
            request.setResponseCode(200 if self.healthy else 503)
            return b"health"
        return b"served " + request.path


@pytest.mark.net
@pytest_twisted.ensureDeferred
async def test_slots_attach_only_while_the_health_check_passes(upstreams):
    health = Health()
    port = await listen(Site(health))
    upstreams.append(port)
    side = Sidecar()
    await side.start(f"http://127.0.0.1:{port.getHost().port}", slots=2, health="/health")
    try:
        await deferToThread(time.sleep, 0.5)
        assert side.hub.pool.idle == 0
        health.healthy = True
        await wait_for(lambda: side.hub.pool.idle == 2, what="the slots once healthy")
        health.healthy = False
        await wait_for(lambda: side.hub.pool.idle == 0, what="the slots detached when unhealthy")
        waiting = deferToThread(exchange, side.hub.consumer_port,
                                b"GET /later HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n")
        await wait_for(lambda: side.hub.pool.queued == 1, what="the job to wait at the hub")
        health.healthy = True
        answer = await waiting
        assert answer.endswith(b"\r\n\r\nserved /later")
    finally:
        await side.stop()


@pytest.mark.net
@pytest_twisted.ensureDeferred
async def test_an_upstream_on_a_unix_socket(upstreams, tmp_path):
    path = str(tmp_path / "app.sock")
    port = await UNIXServerEndpoint(reactor, path).listen(Site(Echo()))
    upstreams.append(port)
    side = Sidecar()
    await side.start(f"unix:{path}", slots=1)
    try:
        await wait_for(lambda: side.hub.pool.idle == 1, what="the sidecar's slot")
        answer = await fetch(side.hub.consumer_port, b"/over-unix")
        assert answer.endswith(b"\r\n\r\nhello /over-unix")
    finally:
        await side.stop()
