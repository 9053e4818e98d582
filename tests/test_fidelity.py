"""
HTTP fidelity: a WSGI app answered through the hub must look exactly like
the same app served directly by twisted.web.

Every comparison sends the same request bytes over raw TCP to the hub's
consumer port and to a plain C{Site(WSGIResource(app))} on another
loopback port, then compares the raw answers: status line, every header
(repeated ones too, in order; only C{Date} and C{Server} are ignored),
framing, and the body after de-chunking (chunk boundaries are per hop).

The hub adds C{X-Forwarded-*} request headers on purpose and strips
hop-by-hop ones; the echo app reports the former in an
C{X-Echo-Forwarded} response header, which is checked and then set aside.
The hub also adds one C{Server-Timing} response header after the worker's
own (docs/observability.md): it is checked, last, and set aside too; with
C{--no-server-timing} nothing is (L{test_no_server_timing_is_byte_for_byte}).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import random
import re
from collections import deque
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Iterable, Sequence

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, serverFromString
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.protocols.policies import WrappingFactory
from twisted.python.threadpool import ThreadPool
from twisted.web.http import HTTPChannel
from twisted.web.server import Site
from twisted.web.wsgi import WSGIResource

from tests.apps.flask_app import create_app
from tests.apps.wsgi import FidelityApp, pattern_block
from tests.harness import WAIT, wait_for
from tests.loopback import start_hub

pytestmark = pytest.mark.net

KIB = 1024
MIB = 1024 * KIB

#: The Host header every comparison sends, to both servers alike.
HOST = b"fidelity.test"

#: Response headers that name the server and the time; never compared.
IGNORED_RESPONSE_HEADERS = frozenset({b"date", b"server"})


# Raw HTTP over TCP, in the reactor
# ---------------------------------


@dataclass
class RawResponse:
    """
    One response exactly as received, framing undone.

    :ivar interim: the raw heads of any 1xx responses before it.
    :ivar framing: C{none}, C{length}, C{chunked} or C{eof}.
    """

    interim: list[bytes]
    status_line: bytes
    headers: list[tuple[bytes, bytes]]
    framing: str
    body: bytes
    trailers: list[bytes] = field(default_factory=list)

    @property
    def code(self) -> int:
        return int(self.status_line.split(b" ", 2)[1])

    def header(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n.lower() == name.lower()]

    def pop_header(self, name: bytes) -> list[bytes]:
        values = self.header(name)
        self.headers = [(n, v) for n, v in self.headers if n.lower() != name.lower()]
        return values


class ResponseReader:
    """
    Split the bytes of one connection into responses, by RFC 9112 framing
    rules only: it decides where each response ends, and keeps the rest
    byte for byte.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._methods: deque[bytes] = deque()
        self.responses: list[RawResponse] = []
        self.received = 0
        self.error: str | None = None
        self._state = "head"
        self._interim: list[bytes] = []
        self._head: tuple[bytes, list[tuple[bytes, bytes]]] | None = None
        self._framing = ""
        self._body: list[bytes] = []
        self._trailers: list[bytes] = []
        self._remaining = 0

    @property
    def leftover(self) -> bytes:
        return bytes(self._buffer)

    @property
    def in_progress(self) -> bool:
        return self._state != "head" or bool(self._buffer)

    def current_body(self) -> bytes:
        """The body received so far of the response being read."""
        return b"".join(self._body)

    def interim_count(self) -> int:
        return len(self._interim)

    def expect(self, methods: Iterable[bytes]) -> None:
        """Responses to come answer these request methods, in order."""
        self._methods.extend(methods)

    def feed(self, data: bytes) -> None:
        self.received += len(data)
        self._buffer += data
        if self.error is None:
            try:
                self._parse()
            except ValueError as e:
                self.error = f"unparseable response: {e}"

    def eof(self) -> None:
        if self._state == "eof":
            self._body.append(bytes(self._buffer))
            del self._buffer[:]
            self._finish()

    def _parse(self) -> None:
        buffer = self._buffer
        while True:
            state = self._state
            if state == "head":
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(buffer[:end])
                del buffer[: end + 4]
                self._start(head)
            elif state == "length":
                take = min(self._remaining, len(buffer))
                if take:
                    self._body.append(bytes(buffer[:take]))
                    del buffer[:take]
                    self._remaining -= take
                if self._remaining:
                    return
                self._finish()
            elif state == "chunk-size":
                end = buffer.find(b"\r\n")
                if end < 0:
                    return
                size = int(bytes(buffer[:end]).split(b";")[0].strip(), 16)
                del buffer[: end + 2]
                self._remaining = size
                self._state = "chunk-data" if size else "trailers"
            elif state == "chunk-data":
                take = min(self._remaining, len(buffer))
                if take:
                    self._body.append(bytes(buffer[:take]))
                    del buffer[:take]
                    self._remaining -= take
                if self._remaining or len(buffer) < 2:
                    return
                if buffer[:2] != b"\r\n":
                    raise ValueError("chunk not followed by CRLF")
                del buffer[:2]
                self._state = "chunk-size"
            elif state == "trailers":
                end = buffer.find(b"\r\n")
                if end < 0:
                    return
                line = bytes(buffer[:end])
                del buffer[: end + 2]
                if not line:
                    self._finish()
                else:
                    self._trailers.append(line)
            else:  # eof: everything until the connection closes
                if buffer:
                    self._body.append(bytes(buffer))
                    del buffer[:]
                return

    def _start(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        status_line = lines[0]
        headers = []
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon:
                raise ValueError(f"header line without colon: {line!r}")
            headers.append((name, value.strip(b" \t")))
        code = int(status_line.split(b" ", 2)[1])
        if 100 <= code < 200:
            self._interim.append(head)
            return
        self._head = (status_line, headers)
        method = self._methods.popleft() if self._methods else b"GET"
        names = {n.lower(): v for n, v in headers}
        if method == b"HEAD" or code in (204, 304):
            self._framing = "none"
            self._finish()
        elif b"chunked" in names.get(b"transfer-encoding", b"").lower():
            self._framing, self._state = "chunked", "chunk-size"
        elif b"content-length" in names:
            self._framing, self._state = "length", "length"
            self._remaining = int(names[b"content-length"])
        else:
            self._framing, self._state = "eof", "eof"

    def _finish(self) -> None:
        status_line, headers = self._head
        self.responses.append(
            RawResponse(
                self._interim,
                status_line,
                headers,
                self._framing,
                b"".join(self._body),
                self._trailers,
            )
        )
        self._state = "head"
        self._interim, self._body, self._trailers = [], [], []
        self._head = None


class RawConnection(Protocol):
    """
    A TCP connection that sends exact bytes and reads raw responses,
    without blocking the reactor.
    """

    def __init__(self) -> None:
        self.reader = ResponseReader()
        self.closed: Deferred[None] = Deferred()
        self.lost = False
        self._waiters: list[tuple[Callable[[], bool], Deferred[None]]] = []

    @classmethod
    async def open(cls, port: int) -> RawConnection:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=WAIT)
        return await connectProtocol(endpoint, cls())

    def send(self, data: bytes, methods: Iterable[bytes] = ()) -> None:
        """
        Write C{data}, announcing the methods of the requests it holds so
        the reader can tell where their responses end.
        """
        self.reader.expect(methods)
        self.transport.write(data)

    def dataReceived(self, data: bytes) -> None:
        self.reader.feed(data)
        self._wake()

    def connectionLost(self, reason=None) -> None:
        self.lost = True
        self.reader.eof()
        self._wake()
        self.closed.callback(None)

    def _wake(self) -> None:
        for waiter in list(self._waiters):
            condition, waiting = waiter
            if self.lost or self.reader.error or condition():
                self._waiters.remove(waiter)
                waiting.callback(None)

    async def until(self, condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
        """
        Wait until C{condition()} holds; fail on a timeout, a parse error,
        or the connection closing first.
        """
        if not condition() and not self.lost:
            waiting: Deferred[None] = Deferred()
            waiter = (condition, waiting)
            self._waiters.append(waiter)
            waiting.addTimeout(timeout, reactor)
            try:
                await waiting
            except DeferredTimeout:
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {what}; "
                    f"{self.reader.received} bytes received, "
                    f"{len(self.reader.responses)} responses"
                ) from None
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        assert self.reader.error is None, self.reader.error
        if not condition():
            raise AssertionError(
                f"connection closed before {what}; {len(self.reader.responses)} "
                f"responses, partial data: {self.reader.leftover[:300]!r}"
            )

    async def responses(self, count: int, timeout: float = WAIT) -> list[RawResponse]:
        await self.until(lambda: len(self.reader.responses) >= count, f"{count} responses", timeout)
        return self.reader.responses[:count]

    async def close(self) -> None:
        """Close the connection and wait until it is closed."""
        if self.lost:
            return
        self.transport.loseConnection()
        # Bytes still queued for a peer that stopped reading would hold a
        # clean close forever; cut the connection after a while.
        abort = reactor.callLater(WAIT, self.transport.abortConnection)
        try:
            await self.closed
        finally:
            if abort.active():
                abort.cancel()


@dataclass
class Exchange:
    responses: list[RawResponse]
    server_closed: bool


async def exchange(
    port: int,
    data: bytes,
    methods: Sequence[bytes],
    until_close: bool = False,
    timeout: float = WAIT,
) -> Exchange:
    """
    Send C{data} on a new connection, read one response per method, close.

    :param until_close: also wait for the server to close the connection,
        and read a body framed by the close.
    """
    connection = await RawConnection.open(port)
    try:
        connection.send(data, methods)
        if until_close:
            await connection.until(lambda: connection.lost, "the server to close", timeout)
            responses = connection.reader.responses
            assert len(responses) == len(methods), (
                f"{len(responses)} responses to {len(methods)} requests; "
                f"unread: {connection.reader.leftover[:300]!r}"
            )
        else:
            responses = await connection.responses(len(methods), timeout)
        assert not connection.reader.leftover, (
            f"bytes after the last response: {connection.reader.leftover[:300]!r}"
        )
        return Exchange(responses, connection.lost)
    finally:
        await connection.close()


def request_bytes(
    method: bytes,
    target: bytes,
    headers: Sequence[tuple[bytes, bytes]] = (),
    body: bytes | None = None,
    version: bytes = b"HTTP/1.1",
    chunked: bool = False,
    host: bytes | None = HOST,
) -> bytes:
    """
    An exact request: C{Host} first unless given, then C{headers}, then a
    C{Content-Length} or chunked framing when there is a body.
    """
    lines = [b"%s %s %s" % (method, target, version)]
    if host is not None:
        lines.append(b"Host: " + host)
    lines.extend(b"%s: %s" % (name, value) for name, value in headers)
    payload = b""
    if body is not None:
        if chunked:
            lines.append(b"Transfer-Encoding: chunked")
            payload = chunk_encode(body)
        else:
            lines.append(b"Content-Length: %d" % (len(body),))
            payload = body
    return b"\r\n".join(lines) + b"\r\n\r\n" + payload


def chunk_encode(body: bytes, size: int = 64 * KIB) -> bytes:
    parts = []
    for start in range(0, len(body), size):
        piece = body[start : start + size]
        parts.append(b"%x\r\n%s\r\n" % (len(piece), piece))
    parts.append(b"0\r\n\r\n")
    return b"".join(parts)


# What is compared
# ----------------


def view(response: RawResponse) -> dict:
    """
    Everything compared of one response; long bodies by length and hash so
    a mismatch stays readable.
    """
    body = response.body
    shown: object = body
    if len(body) > 4 * KIB:
        shown = f"<{len(body)} bytes, sha256 {hashlib.sha256(body).hexdigest()}>"
    return {
        "interim": response.interim,
        "status_line": response.status_line,
        "headers": [
            (name, value)
            for name, value in response.headers
            if name.lower() not in IGNORED_RESPONSE_HEADERS
        ],
        "framing": response.framing,
        "body": shown,
        "trailers": response.trailers,
    }


def expected_forwarded(host: bytes | None = HOST, forwarded_for: str = "127.0.0.1") -> dict:
    """What the hub tells the app about the consumer's hop."""
    seen = {"for": forwarded_for, "proto": "http"}
    if host is not None:
        seen["host"] = host.decode("latin-1")
    return seen


def set_forwarded_aside(
    through_hub: RawResponse, direct: RawResponse, hub_forwarded: dict, direct_forwarded: dict
) -> None:
    """
    Check the X-Forwarded-* headers each app saw, then drop that report so
    the rest compares byte for byte.

    Only the echo app reports them: where it answered directly it must
    have answered through the hub too, each once, and nowhere else.
    """
    hub_seen = [json.loads(value) for value in through_hub.pop_header(b"X-Echo-Forwarded")]
    direct_seen = [json.loads(value) for value in direct.pop_header(b"X-Echo-Forwarded")]
    echo = bool(direct_seen)
    assert direct_seen == ([direct_forwarded] if echo else []), direct_seen
    assert hub_seen == ([hub_forwarded] if echo else []), (
        f"X-Echo-Forwarded through the hub {hub_seen}, directly {direct_seen}; "
        + describe_difference(view(through_hub), view(direct))
    )


#: The Server-Timing value the hub adds to a response it relays.
HUB_TIMING = re.compile(rb"queue;dur=\d+\.\d, worker;dur=\d+\.\d")


def set_server_timing_aside(through_hub: RawResponse) -> None:
    """
    Check the one header the hub adds to a worker's response, its
    C{Server-Timing}, after all of the worker's own (the framing's
    C{Transfer-Encoding}, the connection's own, may follow it); then drop
    it, so the rest compares byte for byte.
    """
    headers = through_hub.headers
    last = len(headers) - 1
    if last > 0 and headers[last][0] == b"Transfer-Encoding":
        last -= 1
    name, value = headers[last] if last >= 0 else (b"", b"")
    assert name == b"Server-Timing" and HUB_TIMING.fullmatch(value), (
        f"no Server-Timing of the hub's last: {headers}")
    del headers[last]


def describe_difference(through_hub: dict, direct: dict) -> str:
    """Where two response views differ, line by line."""
    lines = []
    for key in through_hub:
        if through_hub[key] == direct[key]:
            continue
        if key == "headers":
            hub_lines = [f"{n.decode()}: {v.decode()}" for n, v in through_hub[key]]
            direct_lines = [f"{n.decode()}: {v.decode()}" for n, v in direct[key]]
            diff = difflib.unified_diff(
                direct_lines, hub_lines, "direct", "through hub", lineterm="", n=20
            )
            lines.append("headers differ (Date and Server left out):")
            lines.extend("    " + line for line in diff)
        else:
            lines.append(f"{key} differs:")
            lines.append(f"    direct:      {direct[key]!r:.600}")
            lines.append(f"    through hub: {through_hub[key]!r:.600}")
    return "\n".join(lines)


def assert_same_views(through_hub: Sequence[RawResponse], direct: Sequence[RawResponse]) -> None:
    assert len(through_hub) == len(direct)
    for index, (hub_response, direct_response) in enumerate(zip(through_hub, direct, strict=True)):
        hub_view, direct_view = view(hub_response), view(direct_response)
        if hub_view != direct_view:
            pytest.fail(
                f"response {index} through the hub differs from the direct one:\n"
                + describe_difference(hub_view, direct_view)
            )


def assert_same(
    through_hub: Sequence[RawResponse],
    direct: Sequence[RawResponse],
    hub_forwarded: dict | None = None,
    direct_forwarded: dict | None = None,
) -> None:
    """
    The responses through the hub are those of the app served directly.
    """
    if hub_forwarded is None:
        hub_forwarded = expected_forwarded()
    assert len(through_hub) == len(direct)
    for hub_response, direct_response in zip(through_hub, direct, strict=True):
        set_server_timing_aside(hub_response)
        set_forwarded_aside(hub_response, direct_response, hub_forwarded, direct_forwarded or {})
    assert_same_views(through_hub, direct)


def echoed(response: RawResponse) -> dict:
    """The request view the echo app answered with."""
    assert response.code == 200, response.status_line
    return json.loads(response.body)


def echoed_headers(response: RawResponse) -> list[tuple[str, str]]:
    return [tuple(pair) for pair in echoed(response)["headers"]]


# Servers
# -------


class BigHeaderChannel(HTTPChannel):
    """A plain twisted.web channel that accepts heads as large as the hub's."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.MAX_LENGTH = self.totalHeadersSize = limit


@dataclass
class DirectServer:
    """The app served by twisted.web alone, on its own loopback port."""

    port: int
    _listening: object
    _factory: WrappingFactory
    _threads: ThreadPool

    async def stop(self) -> None:
        try:
            await self._listening.stopListening()
            await wait_for(lambda: not self._factory.protocols, what="direct connections to close")
            # A thread still in the app may be waiting on the reactor; stop()
            # joins threads, so joining it now would hang the reactor.
            await wait_for(lambda: not self._threads.working, what="direct app threads")
        finally:
            self._threads.stop()


class Servers:
    """The hub with one worker running an app, and the same app direct."""

    def __init__(self, running_hub) -> None:
        self.running_hub = running_hub
        self._direct: list[DirectServer] = []
        self.hub_port = running_hub.consumer_port
        self.direct_port = 0

    async def serve(self, app, max_header_bytes: int | None = None) -> None:
        await self.running_hub.add_worker(app, slots=1)
        threads = ThreadPool(minthreads=1, maxthreads=1, name="fidelity-direct")
        threads.start()
        site = Site(WSGIResource(reactor, threads, app))
        if max_header_bytes is not None:
            site.protocol = partial(BigHeaderChannel, max_header_bytes)
        factory = WrappingFactory(site)
        listening = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(factory)
        server = DirectServer(listening.getHost().port, listening, factory, threads)
        self._direct.append(server)
        self.direct_port = server.port

    async def both(
        self, data: bytes, methods: Sequence[bytes] = (b"GET",), until_close: bool = False
    ) -> tuple[Exchange, Exchange]:
        """The same bytes sent through the hub, then directly."""
        through_hub = await exchange(self.hub_port, data, methods, until_close)
        direct = await exchange(self.direct_port, data, methods, until_close)
        return through_hub, direct

    async def compare(self, data: bytes, methods: Sequence[bytes] = (b"GET",), **kwargs):
        """Send C{data} both ways and assert the answers are the same."""
        through_hub, direct = await self.both(data, methods)
        assert_same(through_hub.responses, direct.responses, **kwargs)
        return through_hub.responses

    async def stop(self) -> None:
        errors = []
        for server in self._direct:
            try:
                await server.stop()
            except Exception as error:
                errors.append(error)
        if errors:
            raise errors[0]


@pytest_twisted.async_yield_fixture
async def servers(running_hub):
    """A hub and a direct server; call C{serve(app)} to start both."""
    both = Servers(running_hub)
    yield both
    await both.stop()


@pytest_twisted.async_yield_fixture
async def app(servers):
    """The fidelity WSGI app, served through the hub and directly."""
    application = FidelityApp()
    await servers.serve(application)
    yield application
    application.gate.set()


# Methods, paths, headers
# -----------------------

# Every method llhttp knows reaches the app (the IANA registry's and a few
# more, PURGE and QUERY among them); one it does not know is a 501 from the
# hub (tests/test_smuggling.py).
METHODS = [
    b"GET", b"HEAD", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS", b"PURGE", b"QUERY",
    b"PROPFIND",
]


#: The methods whose answer has a body that shows what the app saw.
ECHOED_METHODS = [method for method in METHODS if method != b"HEAD"]


@pytest.mark.parametrize("method", ECHOED_METHODS, ids=[m.decode() for m in ECHOED_METHODS])
@pytest_twisted.ensureDeferred
async def test_method(servers, app, method):
    """Every method llhttp knows, standard or not, reaches the app and answers as directly."""
    with_body = (b"POST", b"PUT", b"PATCH", b"PURGE", b"QUERY")
    body = b"payload for " + method if method in with_body else None
    responses = await servers.compare(
        request_bytes(method, b"/resource?m=1", [(b"Accept", b"*/*")], body), [method]
    )
    assert echoed(responses[0])["method"] == method.decode()


@pytest_twisted.ensureDeferred
async def test_head_method(servers, app):
    """HEAD reaches the app and answers as directly: the head alone."""
    responses = await servers.compare(
        request_bytes(b"HEAD", b"/resource?m=1", [(b"Accept", b"*/*")]), [b"HEAD"]
    )
    assert (responses[0].code, responses[0].framing, responses[0].body) == (200, "none", b"")


@pytest_twisted.ensureDeferred
async def test_bodyless_post(servers, app):
    """A POST without any body framing reaches the app with an empty body."""
    responses = await servers.compare(request_bytes(b"POST", b"/_/hash"), [b"POST"])
    assert json.loads(responses[0].body)["body_length"] == 0


@pytest_twisted.ensureDeferred
async def test_path_and_query_bytes(servers, app):
    """Percent-encoded paths and raw query strings reach the app unchanged."""
    targets = [
        b"/a%2Fb/%7E?x=%20&y=1&y=2",
        b"/%E2%82%AC/caf%C3%A9?q=%E2%82%AC&empty=&flag",
        b"/plus+sign/semi;colon?a=b+c&c=%2B&d=%26%3D",
        b"//double//slash/?",
        b"/trailing/",
    ]
    for target in targets:
        responses = await servers.compare(request_bytes(b"GET", target))
        seen = echoed(responses[0])
        assert seen["query_string"] == target.partition(b"?")[2].decode("latin-1")


class RawWorker(Protocol):
    """
    A worker slot made of raw bytes: it attaches, then records every
    request head the hub sends and answers each with a fixed response.
    WSGI decodes the path (C{%2F} becomes C{/}), so only the wire shows
    the request target the hub really sent.
    """

    ATTACH = (
        b"GET /pothead/v1/attach/default HTTP/1.1\r\nHost: hub\r\n"
        b"Connection: Upgrade\r\nUpgrade: ptth\r\nALPN: http%2F1.1\r\n\r\n"
    )
    ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    def __init__(self) -> None:
        self.buffer = b""
        self.attached = False
        self.heads: list[bytes] = []
        self.closed: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.ATTACH)

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            if not self.attached:
                assert head.startswith(b"HTTP/1.1 101 "), head
                self.attached = True
                continue
            # The requests in this test have no body.
            self.heads.append(head)
            self.transport.write(self.ANSWER)

    def connectionLost(self, reason=None) -> None:
        self.closed.callback(None)


@pytest_twisted.ensureDeferred
async def test_request_on_the_wire(running_hub):
    """The worker gets the consumer's request target byte for byte, hop-by-hop headers gone."""
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", running_hub.worker_port, timeout=WAIT)
    worker = await connectProtocol(endpoint, RawWorker())
    try:
        await wait_for(lambda: running_hub.pool.idle == 1, what="the raw worker to attach")
        targets = [b"/a%2Fb/%7E?x=%20&y=1&y=2", b"/%e2%82%ac;p=1?q=%2B+&&=", b"/%2e%2e/x?"]
        for target in targets:
            result = await exchange(
                running_hub.consumer_port,
                request_bytes(
                    b"OPTIONS",
                    target,
                    [
                        (b"Connection", b"X-Hop"),
                        (b"X-Hop", b"1"),
                        (b"TE", b"trailers"),
                        (b"X-Keep", b"1"),
                        (b"X-Keep", b"2"),
                    ],
                ),
                [b"OPTIONS"],
            )
            assert result.responses[0].status_line == b"HTTP/1.1 200 OK"
        assert worker.heads == [
            b"OPTIONS " + target + b" HTTP/1.1\r\n"
            b"Host: fidelity.test\r\n"
            b"X-Keep: 1\r\n"
            b"X-Keep: 2\r\n"
            b"X-Forwarded-For: 127.0.0.1\r\n"
            b"X-Forwarded-Proto: http\r\n"
            b"X-Forwarded-Host: fidelity.test"
            for target in targets
        ]
    finally:
        worker.transport.loseConnection()
        await worker.closed


@pytest_twisted.ensureDeferred
async def test_request_headers_reach_app(servers, app):
    """Every end-to-end request header reaches the app, repeated ones too, Host kept."""
    headers = [
        (b"Accept", b"text/html"),
        (b"X-Repeat", b"one"),
        (b"User-Agent", b"fidelity/1.0"),
        (b"X-Repeat", b"two, three"),
        (b"Cookie", b"a=1; b=2"),
        (b"Authorization", b"Bearer not-for-the-hub"),
        (b"X-Empty", b""),
        (b"x-lower", b"value"),
        (b"X-Repeat", b"four"),
    ]
    responses = await servers.compare(request_bytes(b"GET", b"/headers", headers))
    seen = dict(echoed_headers(responses[0]))
    assert seen["HTTP_HOST"] == "fidelity.test"
    assert seen["HTTP_X_REPEAT"] == "one,two, three,four"
    assert seen["HTTP_AUTHORIZATION"] == "Bearer not-for-the-hub"


@pytest_twisted.ensureDeferred
async def test_hop_by_hop_request_headers_stripped(servers, app):
    """Hop-by-hop headers, and names listed in Connection, never reach the app."""
    hop_by_hop = [
        (b"Connection", b"keep-alive, X-Hop-Secret"),
        (b"Keep-Alive", b"timeout=5"),
        (b"TE", b"trailers"),
        (b"Upgrade", b"websocket"),
        (b"Proxy-Authorization", b"Basic cHJveHk6c2VjcmV0"),
        (b"X-Hop-Secret", b"only for the hub"),
    ]
    end_to_end = [(b"Accept", b"*/*"), (b"X-Keep", b"yes")]
    data = request_bytes(b"GET", b"/hop", end_to_end[:1] + hop_by_hop + end_to_end[1:])
    through_hub, direct = await servers.both(data)
    hub_response, direct_response = through_hub.responses[0], direct.responses[0]
    set_forwarded_aside(hub_response, direct_response, expected_forwarded(), {})
    stripped = {
        "HTTP_CONNECTION",
        "HTTP_KEEP_ALIVE",
        "HTTP_TE",
        "HTTP_UPGRADE",
        "HTTP_PROXY_AUTHORIZATION",
        "HTTP_X_HOP_SECRET",
    }
    direct_headers = echoed_headers(direct_response)
    assert stripped <= {name for name, _ in direct_headers}
    assert echoed_headers(hub_response) == [
        (name, value) for name, value in direct_headers if name not in stripped
    ]


@pytest_twisted.ensureDeferred
async def test_forwarded_headers_added(servers, app):
    """The hub adds X-Forwarded-For/-Proto/-Host, appending to a consumer's X-Forwarded-For."""
    headers = [(b"X-Forwarded-For", b"203.0.113.7"), (b"X-Forwarded-Proto", b"https")]
    await servers.compare(
        request_bytes(b"GET", b"/fwd", headers),
        hub_forwarded=expected_forwarded(forwarded_for="203.0.113.7, 127.0.0.1"),
        direct_forwarded={"for": "203.0.113.7", "proto": "https"},
    )
    # Without any forwarding headers from the consumer, and with a Host
    # naming a port.
    through_hub, direct = await servers.both(
        request_bytes(b"GET", b"/fwd", host=b"fidelity.test:8443")
    )
    assert_same(
        through_hub.responses, direct.responses, expected_forwarded(host=b"fidelity.test:8443")
    )


@pytest_twisted.ensureDeferred
async def test_response_headers_and_cookies(servers, app):
    """Several Set-Cookie and other repeated response headers come back as sent, in order."""
    responses = await servers.compare(request_bytes(b"GET", b"/_/cookies"))
    assert responses[0].header(b"Set-Cookie") == [
        b"a=1; Path=/",
        b"b=2; HttpOnly; SameSite=Lax",
        b"c=3; Expires=Wed, 21 Oct 2037 07:28:00 GMT; Secure",
    ]


# Status codes and bodiless answers
# ---------------------------------


@pytest.mark.parametrize(
    "status",
    [
        b"200/Fine Thanks",
        b"201/Created",
        b"299/Custom Thing",
        b"404/Not Found",
        b"418/I'm a teapot",
        b"500/Everything Is On Fire",
        b"503/Back Soon",
    ],
)
@pytest_twisted.ensureDeferred
async def test_status_and_reason(servers, app, status):
    """Status code and reason phrase reach the consumer exactly."""
    target = b"/_/status/" + status.replace(b" ", b"%20").replace(b"'", b"%27")
    responses = await servers.compare(request_bytes(b"GET", target))
    code, reason = status.split(b"/")
    assert responses[0].status_line == b"HTTP/1.1 " + code + b" " + reason


@pytest_twisted.ensureDeferred
async def test_head_keeps_content_length(servers, app):
    """HEAD has no body and keeps the Content-Length the app set, or none."""
    for target in (b"/_/hash", b"/_/headlen", b"/_/stream", b"/_/status/299/Custom%20Thing"):
        responses = await servers.compare(request_bytes(b"HEAD", target), [b"HEAD"])
        assert responses[0].body == b""
    responses = await servers.compare(request_bytes(b"HEAD", b"/_/headlen"), [b"HEAD"])
    assert responses[0].header(b"Content-Length") == [b"5000"]


@pytest_twisted.ensureDeferred
async def test_204_and_304(servers, app):
    """204 and 304 come back without a body and with the app's headers."""
    for target in (b"/_/nobody/204", b"/_/nobody/304"):
        responses = await servers.compare(request_bytes(b"GET", target))
        assert responses[0].framing == "none"


@pytest_twisted.ensureDeferred
async def test_304_keeps_content_length(servers, app):
    """A 304 keeps the Content-Length its app sent (RFC 9110 section 8.6)."""
    responses = await servers.compare(request_bytes(b"GET", b"/_/nobody/304-length"))
    assert responses[0].header(b"Content-Length") == [b"1234"]


# Bodies
# ------

BODY_SIZES = [0, 1, 64 * KIB, 1 * MIB, 20 * MIB]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("size", BODY_SIZES, ids=[str(s) for s in BODY_SIZES])
@pytest_twisted.ensureDeferred
async def test_request_body(servers, app, size, chunked):
    """Request bodies of any size and framing reach the app intact."""
    body = random.Random(size).randbytes(size)
    responses = await servers.compare(
        request_bytes(
            b"POST",
            b"/_/hash",
            [(b"Content-Type", b"application/octet-stream")],
            body,
            chunked=chunked,
        ),
        [b"POST"],
    )
    assert json.loads(responses[0].body) == {
        "method": "POST",
        "body_length": size,
        "body_sha256": hashlib.sha256(body).hexdigest(),
    }


@pytest_twisted.ensureDeferred
async def test_answer_without_reading_a_large_body(servers, app):
    """
    An app that answers a large upload without reading it (a refusal)
    answers as it does directly, and the requests after it, on the same
    connection and on the worker's next slot, are served whole.
    """
    body = random.Random(7).randbytes(20 * MIB)
    refused = request_bytes(b"POST", b"/_/status/413/Too%20Large", [], body)
    after = request_bytes(b"POST", b"/_/hash", [], body[:MIB])
    responses = await servers.compare(refused + after + refused + after, [b"POST"] * 4)
    assert [r.code for r in responses] == [413, 200, 413, 200]
    assert json.loads(responses[3].body)["body_sha256"] == hashlib.sha256(body[:MIB]).hexdigest()


@pytest_twisted.ensureDeferred
async def test_large_streamed_response(servers, app):
    """A 50 MB generated response arrives whole and identical."""
    size = 50 * 1000 * 1000
    responses = await servers.compare(request_bytes(b"GET", b"/_/big?size=%d" % size))
    body = responses[0].body
    assert len(body) == size
    assert body[:16] == pattern_block(0, 16)


@pytest_twisted.ensureDeferred
async def test_slow_generator(servers, app):
    """A generator that sleeps between pieces answers the same through the hub."""
    responses = await servers.compare(request_bytes(b"GET", b"/_/slow?n=8&delay=0.02"))
    assert responses[0].body == b"".join(b"tick %d\n" % i for i in range(8))


@pytest_twisted.ensureDeferred
async def test_response_is_streamed(servers, app):
    """The consumer gets the first piece of a body before the app has made the rest."""
    results = []
    for port in (servers.hub_port, servers.direct_port):
        connection = await RawConnection.open(port)
        try:
            connection.send(request_bytes(b"GET", b"/_/gate"), [b"GET"])
            await connection.until(
                lambda c=connection: c.reader.current_body() == b"first\n", "the first piece"
            )
            assert not connection.reader.responses
            app.gate.set()
            results.append((await connection.responses(1))[0])
        finally:
            await connection.close()
    assert_same(results[:1], results[1:])
    assert results[0].body == b"first\nlast\n"


@pytest_twisted.ensureDeferred
async def test_expect_100_continue(servers, app):
    """Expect: 100-continue gets 100 Continue before the body is sent, then the answer."""
    body = b"x" * 1000
    head = request_bytes(b"PUT", b"/_/hash", [(b"Expect", b"100-continue")], body)
    head, _, _ = head.partition(b"\r\n\r\n")
    results = []
    for port in (servers.hub_port, servers.direct_port):
        connection = await RawConnection.open(port)
        try:
            connection.send(head + b"\r\n\r\n", [b"PUT"])
            await connection.until(
                lambda c=connection: c.reader.interim_count() == 1, "100 Continue"
            )
            connection.send(body)
            results.append((await connection.responses(1))[0])
        finally:
            await connection.close()
    assert_same(results[:1], results[1:])
    assert results[0].interim == [b"HTTP/1.1 100 Continue"]
    assert json.loads(results[0].body)["body_length"] == 1000


# Connections
# -----------


@pytest_twisted.ensureDeferred
async def test_http10_consumer(servers, app):
    """HTTP/1.0 requests, with and without a body, answer as directly, then close."""
    requests = [
        (request_bytes(b"GET", b"/old", version=b"HTTP/1.0"), "length"),
        (request_bytes(b"POST", b"/_/hash", body=b"a=1&b=2", version=b"HTTP/1.0"), "length"),
        (request_bytes(
            b"PUT", b"/old", [(b"Content-Type", b"text/plain")], b"abc", version=b"HTTP/1.0"
        ), "length"),
        # No length and no chunking in HTTP/1.0: the close ends the body.
        (request_bytes(b"GET", b"/_/stream", version=b"HTTP/1.0"), "eof"),
        (request_bytes(b"HEAD", b"/_/headlen", version=b"HTTP/1.0"), "none"),
    ]
    for data, framing in requests:
        through_hub, direct = await servers.both(data, [data.split(b" ", 1)[0]], until_close=True)
        assert_same(through_hub.responses, direct.responses)
        assert through_hub.server_closed and direct.server_closed
        assert through_hub.responses[0].status_line.startswith(b"HTTP/1.0 ")
        assert through_hub.responses[0].framing == framing


@pytest_twisted.ensureDeferred
async def test_http10_without_host(servers, app):
    """An HTTP/1.0 request without Host reaches the app with the hub's address as Host."""
    data = request_bytes(b"GET", b"/old?x=1", [(b"Accept", b"*/*")], version=b"HTTP/1.0", host=None)
    through_hub, direct = await servers.both(data, until_close=True)
    hub_response, direct_response = through_hub.responses[0], direct.responses[0]
    set_forwarded_aside(hub_response, direct_response, expected_forwarded(host=None), {})
    assert hub_response.status_line == direct_response.status_line == b"HTTP/1.0 200 OK"
    hub_seen, direct_seen = echoed(hub_response), echoed(direct_response)
    # HTTP/1.1 requires a Host on the hub's request to the worker: the hub
    # names itself, as twisted.web does for an app served directly.
    hub_headers = hub_seen.pop("headers")
    assert ["HTTP_HOST", f"127.0.0.1:{servers.hub_port}"] in hub_headers
    hub_headers.remove(["HTTP_HOST", f"127.0.0.1:{servers.hub_port}"])
    assert hub_headers == direct_seen.pop("headers")
    assert hub_seen == direct_seen


@pytest_twisted.ensureDeferred
async def test_connection_close_request(servers, app):
    """A consumer's Connection: close gets the same answer and the connection closed."""
    through_hub, direct = await servers.both(
        request_bytes(b"GET", b"/_/hash", [(b"Connection", b"close")]), until_close=True
    )
    assert_same(through_hub.responses, direct.responses)
    assert through_hub.server_closed and direct.server_closed


def mixed_requests(count: int) -> list[tuple[bytes, bytes]]:
    """C{count} assorted requests, each with its method."""
    requests = []
    for i in range(count):
        kind = i % 6
        if kind == 0:
            data = request_bytes(b"GET", b"/p/%d?i=%d" % (i, i), [(b"X-Seq", b"%d" % i)])
        elif kind == 1:
            data = request_bytes(b"POST", b"/_/hash", body=b"body %d" % i)
        elif kind == 2:
            data = request_bytes(b"HEAD", b"/_/headlen")
        elif kind == 3:
            data = request_bytes(b"GET", b"/_/stream")
        elif kind == 4:
            data = request_bytes(b"DELETE", b"/_/nobody/204")
        else:
            data = request_bytes(b"PUT", b"/_/hash", body=b"y" * i, chunked=True)
        requests.append((data, data.split(b" ", 1)[0]))
    return requests


@pytest_twisted.ensureDeferred
async def test_pipelining(servers, app):
    """Many requests pipelined on one connection are answered in order, as directly."""
    requests = mixed_requests(30)
    methods = [method for _, method in requests]
    responses = await servers.compare(b"".join(data for data, _ in requests), methods)
    assert [r.code for r in responses] == [204 if m == b"DELETE" else 200 for m in methods]
    assert [echoed(responses[i])["path_info"] for i in (0, 6, 12)] == ["/p/0", "/p/6", "/p/12"]


@pytest_twisted.ensureDeferred
async def test_keep_alive(servers, app):
    """Requests sent one after another on one kept-alive connection answer as directly."""
    results = []
    for port in (servers.hub_port, servers.direct_port):
        connection = await RawConnection.open(port)
        try:
            for index, (data, method) in enumerate(mixed_requests(12)):
                connection.send(data, [method])
                await connection.responses(index + 1)
            assert not connection.lost
            results.append(list(connection.reader.responses))
        finally:
            await connection.close()
    assert_same(results[0], results[1])


@pytest_twisted.ensureDeferred
async def test_large_request_headers_accepted(servers):
    """Request headers totalling about 60 KiB reach the app through the hub."""
    await servers.serve(FidelityApp(), max_header_bytes=64 * KIB)
    headers = [(b"X-Big-%02d" % i, b"%c" % (65 + i % 26) * 1020) for i in range(60)]
    data = request_bytes(b"GET", b"/big-head", headers)
    assert 60 * KIB < len(data) < 62 * KIB
    responses = await servers.compare(data)
    seen = dict(echoed_headers(responses[0]))
    assert all(seen[f"HTTP_X_BIG_{i:02d}"] == chr(65 + i % 26) * 1020 for i in range(60))


@pytest_twisted.ensureDeferred
async def test_large_single_header_accepted(servers):
    """One 20 KiB request header (a big cookie) reaches the app through the hub."""
    await servers.serve(FidelityApp(), max_header_bytes=64 * KIB)
    cookie = b"; ".join(b"c%d=%s" % (i, b"v" * 200) for i in range(100))
    assert len(cookie) > 20 * KIB
    responses = await servers.compare(request_bytes(b"GET", b"/cookie", [(b"Cookie", cookie)]))
    assert dict(echoed_headers(responses[0]))["HTTP_COOKIE"] == cookie.decode()


@pytest_twisted.ensureDeferred
async def test_oversized_request_headers_refused(servers, app):
    """Request headers over the hub's 64 KiB limit get 431 from the hub itself."""
    headers = [(b"X-Big-%02d" % i, b"z" * 1000) for i in range(70)]
    data = request_bytes(b"GET", b"/too-big", headers)
    connection = await RawConnection.open(servers.hub_port)
    try:
        # Send in pieces and stop once answered: bytes the hub never reads
        # would make its close a reset that could swallow the answer.
        for start in range(0, len(data), 4 * KIB):
            if connection.reader.responses or connection.lost:
                break
            connection.send(data[start : start + 4 * KIB])
            await deferLater(reactor, 0.002, lambda: None)
        responses = await connection.responses(1)
        await connection.until(lambda: connection.lost, "the hub to close")
    finally:
        await connection.close()
    assert responses[0].status_line == b"HTTP/1.1 431 Request Header Fields Too Large"
    assert servers.running_hub.pool.idle == 1


# A real framework
# ----------------


def form_body() -> tuple[bytes, bytes]:
    boundary = b"fidelityboundary"
    body = (
        b"--" + boundary + b"\r\n"
        b'Content-Disposition: form-data; name="title"\r\n\r\n'
        b"hello\r\n"
        b"--" + boundary + b"\r\n"
        b'Content-Disposition: form-data; name="file"; filename="data.bin"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n" + bytes(range(256)) * 40 + b"\r\n"
        b"--" + boundary + b"--\r\n"
    )
    return b"multipart/form-data; boundary=" + boundary, body


MULTIPART_TYPE, MULTIPART_BODY = form_body()
FORM = [(b"Content-Type", b"application/x-www-form-urlencoded")]
AS_JSON = [(b"Content-Type", b"application/json")]

FLASK_REQUESTS = {
    "json": request_bytes(b"GET", b"/?a=1&a=2&b=%C3%A9"),
    "redirect": request_bytes(b"GET", b"/redirect"),
    "redirect-external": request_bytes(b"GET", b"/redirect-external"),
    "redirect-external-other-host": request_bytes(
        b"GET", b"/redirect-external", host=b"other.example:8080"
    ),
    "own-url": request_bytes(b"GET", b"/url?x=1", host=b"fidelity.test:8080"),
    "cookies": request_bytes(b"GET", b"/cookies", [(b"Cookie", b"session=old; theme=light")]),
    "abort-404": request_bytes(b"GET", b"/missing"),
    "no-route-404": request_bytes(b"GET", b"/no/such/route"),
    "abort-500": request_bytes(b"GET", b"/boom"),
    "method-not-allowed": request_bytes(b"GET", b"/form"),
    "unknown-method": request_bytes(b"PURGE", b"/"),
    "options": request_bytes(b"OPTIONS", b"/form"),
    "head": request_bytes(b"HEAD", b"/"),
    "form-post": request_bytes(b"POST", b"/form", FORM, b"name=Ada+Lovelace&tag=a&tag=b&empty="),
    "multipart-upload": request_bytes(
        b"POST", b"/upload", [(b"Content-Type", MULTIPART_TYPE)], MULTIPART_BODY
    ),
    "json-patch": request_bytes(b"PATCH", b"/json", AS_JSON, b'{"a": [1, 2, {"b": null}]}'),
    "bad-json": request_bytes(b"POST", b"/json", AS_JSON, b"{not json"),
    "streaming": request_bytes(b"GET", b"/stream"),
}


@pytest.mark.parametrize("name", list(FLASK_REQUESTS))
@pytest_twisted.ensureDeferred
async def test_flask_app(servers, name):
    """A Flask app answers through the hub byte for byte as it does directly."""
    await servers.serve(create_app())
    data = FLASK_REQUESTS[name]
    method = data.split(b" ", 1)[0]
    host = data.split(b"Host: ", 1)[1].split(b"\r\n", 1)[0]
    await servers.compare(data, [method], hub_forwarded=expected_forwarded(host=host))


@pytest_twisted.ensureDeferred
async def test_flask_external_url_names_the_consumers_host(servers):
    """
    Flask builds an external URL from Host: through the hub it names the
    consumer's host, not the worker's or the hub's.
    """
    await servers.serve(create_app())
    responses = await servers.compare(
        FLASK_REQUESTS["redirect-external-other-host"],
        hub_forwarded=expected_forwarded(host=b"other.example:8080"),
    )
    assert responses[0].header(b"Location") == [b"http://other.example:8080/target?q=a+b"]


@pytest_twisted.ensureDeferred
async def test_flask_chunked_form(servers):
    """A chunked form POST reaches Flask through the hub as the same form with a length would."""
    await servers.serve(create_app())
    form = b"name=chunked&x=%26&tag=a&tag=b"
    # The hub buffers the body and sends it with a length.  Served
    # directly, twisted.web's WSGI sets neither CONTENT_LENGTH nor
    # wsgi.input_terminated for a chunked body, so Werkzeug would not read
    # it at all: the fair reference is the same form sent with a length.
    through_hub = await exchange(
        servers.hub_port, request_bytes(b"POST", b"/form", FORM, form, chunked=True), [b"POST"]
    )
    direct = await exchange(
        servers.direct_port, request_bytes(b"POST", b"/form", FORM, form), [b"POST"]
    )
    assert_same(through_hub.responses, direct.responses)
    assert json.loads(through_hub.responses[0].body)["form"] == {
        "name": ["chunked"],
        "x": ["&"],
        "tag": ["a", "b"],
    }


@pytest_twisted.ensureDeferred
async def test_no_server_timing_is_byte_for_byte():
    """
    With C{--no-server-timing} the hub adds no response header at all: a
    Flask app's answers compare byte for byte (but C{Date} and C{Server}),
    with nothing set aside.
    """
    running = await start_hub(server_timing=False)
    servers = Servers(running)
    try:
        await servers.serve(create_app())
        for data in FLASK_REQUESTS.values():
            through_hub, direct = await servers.both(data, [data.split(b" ", 1)[0]])
            assert_same_views(through_hub.responses, direct.responses)
    finally:
        await servers.stop()
        await running.stop()
