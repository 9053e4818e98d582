"""
Worker responses, end to end: a scripted worker slot answers a real hub
process with raw bytes, and a consumer reads, with h11, what the hub makes
of them.

A malformed response must reach the consumer as the hub's own 502 (no
byte of it was relayed), cost the hub only that slot, and leave no
traceback in its log; a valid one, however unusual, must pass through
exactly, with its slot still usable where its framing allows.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.raw_peers import OK_RESPONSE, WAIT, ScriptedWorker, exchange, run_hub

pytestmark = pytest.mark.process

#: The request each case's consumer sends.
GET = b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n"

#: A request sent after a case, on a new connection, to a slot that must
#: still work.
FOLLOW = b"GET /follow HTTP/1.1\r\nHost: h\r\n\r\n"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A hub process with its default limits and no worker."""
    hub = run_hub(tmp_path_factory.mktemp("hub"))
    yield hub
    hub.stop()


@pytest.fixture
def clean_log(hub):
    """Fail a test during which the hub logged a traceback."""
    mark = hub.log_mark()
    yield
    assert "Traceback" not in hub.log_since(mark), hub.log_since(mark)


def assert_follow_is_served(hub, worker: ScriptedWorker) -> None:
    """
    A new consumer request is answered 200 by C{worker}'s slot.
    """
    served = len(worker.heads)
    answer = exchange(hub.consumer_port, FOLLOW, count=1)
    assert answer.statuses == [200], answer
    assert answer.responses[0].body == b"ok"
    assert len(worker.heads) == served + 1, "another slot answered"


def assert_fresh_slot_serves(hub) -> None:
    """
    A new consumer request is answered 200 by a fresh slot that attaches
    now: the hub goes on serving.
    """
    with ScriptedWorker(hub.worker_port, OK_RESPONSE) as fresh:
        assert_follow_is_served(hub, fresh)


def case(answer: bytes, id: str):
    return pytest.param(answer, id=id)


def status_line(line: bytes) -> bytes:
    """A response with C{line} as its status line and a short, framed body."""
    return line + b"\r\nContent-Length: 2\r\n\r\nok"


def field(line: bytes) -> bytes:
    """A 200 response with the header line C{line} and a short, framed body."""
    return b"HTTP/1.1 200 OK\r\n" + line + b"\r\nContent-Length: 2\r\n\r\nok"


@pytest.mark.usefixtures("clean_log")
@pytest.mark.parametrize("answer", [
    case(status_line(b"HTTP/1.1 000 Zero"), "status-000"),
    case(status_line(b"HTTP/1.1 99 Low"), "status-99"),
    case(status_line(b"HTTP/1.1 1000 High"), "status-1000"),
    case(status_line(b"HTTP/1.1 200 O\x01K"), "reason-with-soh"),
    case(status_line(b"HTTP/2.0 200 OK"), "http-2.0"),
    case(field(b"X: a\rb"), "bare-cr-in-value"),
    case(field(b"X: a\x00b"), "nul-in-value"),
    case(b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok", "content-length-list"),
    case(b"HTTP/1.1 200 OK\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\nok",
         "content-length-5000-digits"),
    case(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"2\r\nok\r\n0\r\n\r\n", "content-length-and-chunked"),
    case(field(b"X-Big: " + b"a" * (2 * 1024 * 1024)), "2-mib-field-line"),
    case(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",
         "chunk-size-zz"),
    # Codings the hub would strip the name of but not undo: the consumer
    # would get coded bytes as the body.
    case(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nok", "gzip-until-close"),
    case(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
         "gzip-then-chunked"),
])
def test_malformed_response_is_answered_502(hub, answer):
    """A malformed worker response is answered 502 (no byte of it relayed), its slot dropped, and the hub goes on serving."""
    with ScriptedWorker(hub.worker_port, answer) as worker:
        result = exchange(hub.consumer_port, GET, count=1)
        dropped = worker.hub_closed.wait(WAIT)
    assert result.statuses == [502], result
    assert result.responses[0].body == b"The worker failed to answer this request.\n"
    assert dropped, "the hub kept the slot of a malformed response"
    assert_fresh_slot_serves(hub)


@dataclass(frozen=True)
class Relayed:
    """
    What the consumer must get: C{headers} are pairs that must each be the
    only value of their header.
    """

    status: int
    body: bytes = b""
    headers: tuple[tuple[bytes, bytes], ...] = ()


def assert_relayed(hub, worker: ScriptedWorker, method: bytes, relayed: Relayed) -> None:
    """A C{method} request is answered with C{relayed}, through C{worker}'s slot."""
    result = exchange(hub.consumer_port, method + b" /x HTTP/1.1\r\nHost: h\r\n\r\n",
                      count=1, methods=[method.decode()])
    assert result.statuses == [relayed.status], result
    response = result.responses[0]
    assert response.body == relayed.body
    assert [(name, response.values(name)) for name, _ in relayed.headers] == [
        (name, [value]) for name, value in relayed.headers
    ], response
    assert worker.heads[0].startswith(method + b" /x HTTP/1.1\r\n")


@pytest.mark.usefixtures("clean_log")
@pytest.mark.parametrize("method, answer, relayed", [
    pytest.param(b"GET", b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n",
                 Relayed(204, headers=((b"X-A", b"1"),)), id="204"),
    pytest.param(b"GET", b'HTTP/1.1 304 Not Modified\r\nETag: "e"\r\n\r\n',
                 Relayed(304, headers=((b"ETag", b'"e"'),)), id="304"),
    pytest.param(b"GET", b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
                 b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
                 Relayed(200, b"hello"), id="103-then-200"),
    pytest.param(b"GET", b"HTTP/1.1 100 Continue\r\n\r\n" * 2000
                 + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
                 Relayed(200, b"hello"), id="2000-100-continue-then-200"),
    pytest.param(b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
                 Relayed(200, headers=((b"Content-Length", b"10"),)), id="head-content-length"),
])
def test_valid_response_passes_through(hub, method, answer, relayed):
    """A valid but unusual worker response reaches the consumer exactly, and its slot stays usable."""
    with ScriptedWorker(hub.worker_port, answer) as worker:
        assert_relayed(hub, worker, method, relayed)
        assert_follow_is_served(hub, worker)


@pytest.mark.usefixtures("clean_log")
def test_body_until_close_passes_through(hub):
    """A response whose body ends with the connection reaches the consumer exactly; a fresh slot serves the next request."""
    with ScriptedWorker(hub.worker_port, b"HTTP/1.1 200 OK\r\n\r\nabc", close=True) as worker:
        assert_relayed(hub, worker, b"GET", Relayed(200, b"abc"))
    assert_fresh_slot_serves(hub)
