"""
The hub's reading of consumer requests (llhttp through pothead/http_server.py,
policy in pothead/request.py) and its consumer connections
(pothead/consumer.py): strict heads, framing, pipelining, 100-continue and
HTTP/1.0 keep-alive.

The raw-socket corpus of smuggling attempts against a running hub is still to be written.
"""

from __future__ import annotations

import random

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from pothead.http.server import MAX_PIPELINED, ServerChannel, ServerRequest
from pothead.hub.limits import Limits
from tests.harness import GET, HubHarness, header, status

pytestmark = pytest.mark.unit


class Recorder:
    """
    A request handler that keeps what it is handed, for a L{ServerChannel}
    on a StringTransport.
    """

    request_class = ServerRequest
    requires_host = True

    def __init__(self, **limits) -> None:
        self.limits = Limits(**limits)
        self.clock = Clock()
        self.handled: list[ServerRequest] = []

    def handle(self, request: ServerRequest) -> None:
        self.handled.append(request)

    def answered(self, request: ServerRequest) -> None:
        pass

    def lost(self, request: ServerRequest) -> None:
        pass


def read(*pieces: bytes, **limits) -> tuple[Recorder, StringTransport]:
    """
    Feed C{pieces} to a new connection, one read each.
    """
    recorder = Recorder(**limits)
    channel = ServerChannel(recorder)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.5", 5000))
    channel.makeConnection(transport)
    for piece in pieces:
        channel.dataReceived(piece)
    return recorder, transport


def test_head_parsed_as_sent():
    """
    Method, target and headers are kept as the consumer sent them, in
    order; the body's framing and the connection's fate are read off.
    """
    recorder, _ = read(
        b"POST /a?b=1 HTTP/1.1\r\nHost: h\r\nx-lower: 1 \r\nX-Dup: a\r\n"
        b"Expect: 100-Continue\r\nContent-Length: 5\r\nX-Dup: b\r\n\r\nhello"
        b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"
    )
    head = recorder.handled[0].head
    assert (head.method, head.target, head.version) == (b"POST", b"/a?b=1", b"HTTP/1.1")
    assert head.fields[1] == (b"x-lower", b"1")
    assert head.values(b"x-dup") == [b"a", b"b"]
    assert (head.length, head.chunked, head.keep_alive, head.expects_continue) == (
        5, False, True, True,
    )
    assert recorder.handled[0].content.read() == b"hello"
    for data, keep_alive in [
        (b"GET / HTTP/1.0\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", True),
    ]:
        (request,), _ = read(data)[0].handled, None
        assert request.head.keep_alive is keep_alive and not request.head.has_body
    (chunked,) = read(b"PUT / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")[0].handled
    assert chunked.head.chunked and chunked.content.read() == b""


def test_absolute_form_target_names_the_host():
    """
    An absolute-form target is read in origin form, its authority the
    request's Host whatever Host header came with it (RFC 9112 section
    3.2.2), so the worker and the hub cannot disagree on the host.
    """
    (request,) = read(b"GET http://Other.example:8080/x?q=1 HTTP/1.1\r\nHost: h\r\n\r\n")[
        0].handled
    assert (request.head.target, request.head.host) == (b"/x?q=1", b"Other.example:8080")
    assert request.head.fields == [(b"Host", b"Other.example:8080")]
    (ipv6,) = read(b"GET http://[::1]/ HTTP/1.1\r\n\r\n")[0].handled
    assert (ipv6.head.target, ipv6.head.host) == (b"/", b"[::1]")


@pytest.mark.parametrize(
    "head, code",
    [
        (b"GET /", 400),
        (b"GET / HTTP/1.1 x", 400),
        (b"G(T / HTTP/1.1", 400),
        (b"FOO / HTTP/1.1", 501),
        (b"CONNECT h:443 HTTP/1.1", 501),
        (b"GET /\x7f HTTP/1.1", 400),
        (b"GET /\xe2\x82\xac HTTP/1.1", 400),
        (b"GET ftp://h/ HTTP/1.1", 400),
        (b"GET http://u@h/ HTTP/1.1", 400),
        (b"GET / HTTP/1", 400),
        (b"GET / HTTPS/1.1", 400),
        (b"GET / HTTP/2.0", 505),
        (b"GET / HTTP/3.0", 505),
        (b"GET / HTTP/1.1\r\nHost : h", 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nX(y): 1", 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x00b", 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nX: a\rb", 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b", 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\n continued", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b", 400),
        (b"GET / HTTP/1.1", 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nContent-Length: 3", 400),
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 3", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, x", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked", 501),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: \x0b5\x0c", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 3", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: " + b"9" * 5000, 400),
    ],
)
def test_ambiguous_or_malformed_heads_refused(head, code):
    """
    Whatever a worker might read differently from the hub is refused,
    with the status RFC 9112 gives it, and nothing is handed on.
    """
    recorder, transport = read(head + b"\r\n\r\n")
    assert status(transport).split(b" ")[1] == b"%d" % (code,)
    assert transport.disconnecting and not recorder.handled


def test_mutated_heads_parse_or_are_refused():
    """
    Thousands of seeded mutations of valid requests are either handed on
    or refused with a status: no exception escapes the server.
    """
    seeds = [
        b"GET /p?q=1 HTTP/1.1\r\nHost: h\r\nAccept: */*\r\n\r\n",
        b"POST /u HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"PUT /u HTTP/1.0\r\nContent-Length: 10\r\nConnection: keep-alive\r\n\r\n0123456789",
    ]
    alphabet = b" \t\r\n:,;\x00\x7f\xff0aZ-/"
    rng = random.Random(4)
    handled = refused = 0
    for _ in range(5000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(data))
            choice = rng.random()
            if choice < 0.4:
                data[at] = rng.choice(alphabet)
            elif choice < 0.7:
                del data[at]
            else:
                data.insert(at, rng.choice(alphabet))
        recorder, transport = read(bytes(data))
        handled += bool(recorder.handled)
        refused += transport.value().startswith(b"HTTP/1.1 4") or transport.value().startswith(
            b"HTTP/1.1 5")
    assert handled > 100 and refused > 100


def test_trickled_head_over_the_limit_refused():
    """
    A head that never ends is refused with 431 once more than the header
    limit has arrived, a byte at a time or not, before llhttp holds more.
    """
    _, transport = read(b"GET / HTTP/1.1\r\nX: ", *([b"a"] * 2000), max_header_bytes=1000)
    assert status(transport) == b"HTTP/1.1 431 Request Header Fields Too Large"
    _, transport = read(b"GET /" + b"a" * 2000, max_header_bytes=1000)
    assert status(transport) == b"HTTP/1.1 414 URI Too Long"


def test_refusal_waits_for_the_request_before_it():
    """
    A malformed request pipelined behind a good one is answered after the
    good one's response, in order, and the connection then closes.
    """
    harness = HubHarness()
    slot, _ = harness.worker()
    _, consumer = harness.consumer(GET + b"GET / HTTP/1.1\r\nX: a\x00\r\n\r\n")
    assert consumer.value() == b"" and not consumer.disconnecting
    slot.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    first, second = consumer.value().split(b"ok", 1)
    assert first.startswith(b"HTTP/1.1 200 OK") and second.startswith(b"HTTP/1.1 400")
    assert consumer.disconnecting and harness.pool.queued == 0


def test_many_pipelined_requests_pause_reading():
    """
    A client pipelining more than MAX_PIPELINED requests has its
    connection paused until they are answered; none is dropped.
    """
    recorder = Recorder()
    channel = ServerChannel(recorder)
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(GET * (MAX_PIPELINED + 5))
    assert transport.producerState == "paused" and len(recorder.handled) == 1
    for n in range(MAX_PIPELINED + 5):
        recorder.handled[n].answer(200, b"OK", [], b"")
    assert transport.producerState == "producing"
    assert len(recorder.handled) == MAX_PIPELINED + 5
    assert transport.value().count(b"HTTP/1.1 200 OK") == MAX_PIPELINED + 5


def test_pipelined_requests_answered_in_order():
    """
    Requests sent back to back on one connection are queued one at a
    time, and their answers come back in the order they were asked.
    """
    harness = HubHarness()
    slot, worker = harness.worker()
    _, consumer = harness.consumer(
        b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n"
        b"POST /3 HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi"
    )
    answers = []
    for n in (b"1", b"2", b"3"):
        assert worker.value().split(b" ")[1] == b"/" + n
        worker.clear()
        slot.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n" + n)
        answers.append(consumer.value().rsplit(b"\r\n\r\n", 1)[1])
    assert answers == [b"1", b"2", b"3"]
    assert consumer.value().count(b"HTTP/1.1 200 OK\r\n") == 3
    assert not consumer.disconnecting and harness.pool.idle == 1


def test_expect_100_continue_sent_before_body():
    """
    A consumer that waits for 100 Continue gets it once its head is
    accepted, and its body is then read and queued.
    """
    harness = HubHarness()
    channel, consumer = harness.consumer(
        b"PUT /u HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"
    )
    assert consumer.value() == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert harness.pool.queued == 0
    channel.dataReceived(b"abc")
    assert harness.pool.queued == 1


def test_http10_keep_alive_only_with_a_length():
    """
    An HTTP/1.0 consumer asking for keep-alive keeps its connection when
    the response has a length, and is told so; without one, the body
    runs until close.
    """
    harness = HubHarness()
    slot, _ = harness.worker()
    ask = b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    _, consumer = harness.consumer(ask)
    slot.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert status(consumer) == b"HTTP/1.0 200 OK"
    assert header(consumer, b"Connection") == b"keep-alive"
    assert not consumer.disconnecting
    _, consumer = harness.consumer(ask)
    slot.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
    assert consumer.value().endswith(b"\r\n\r\nok") and header(consumer, b"Connection") is None
    assert header(consumer, b"Transfer-Encoding") is None
    assert consumer.disconnecting


def test_unframed_response_chunked_for_http11():
    """
    A worker response without a length reaches an HTTP/1.1 consumer
    chunked, and the connection stays open for the next request.
    """
    harness = HubHarness()
    slot, _ = harness.worker()
    _, consumer = harness.consumer(GET)
    slot.dataReceived(b"HTTP/1.1 200 OK\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\n\r\n")
    slot.dataReceived(b"3\r\nabc\r\n0\r\n\r\n")
    assert consumer.value() == (
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\nServer-Timing: queue;dur=0.0, worker;dur=0.0\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    )
    assert not consumer.disconnecting


@pytest.mark.parametrize(
    "data, code",
    [
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc", b"400"),
        (b"GET / HTTP/3.0\r\n\r\n", b"505"),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", b"501"),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", b"400"),
    ],
)
def test_refusals_reach_the_consumer(data, code):
    """
    A refused request is answered with its status and the connection
    closed; nothing is queued.
    """
    harness = HubHarness()
    _, consumer = harness.consumer(data)
    assert status(consumer).split(b" ")[1] == code
    assert consumer.disconnecting and harness.pool.queued == 0


def test_consumer_leaving_a_pipelined_queue_is_noticed():
    """
    A consumer whose first request waits in the queue and who closes its
    connection leaves the queue, pipelined requests and all.
    """
    harness = HubHarness()
    channel, _ = harness.consumer(GET + GET)
    assert harness.pool.queued == 1
    channel.connectionLost(Failure(ConnectionError()))
    assert harness.pool.queued == 0


def test_empty_chunked_body_reaches_the_worker_as_a_length():
    """
    A chunked request whose body is empty is still sent to the worker with
    a body of length 0, as a framed body, whatever its method.
    """
    harness = HubHarness()
    _, worker = harness.worker()
    harness.consumer(b"PATCH /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert worker.value().startswith(b"PATCH /p HTTP/1.1\r\nContent-Length: 0\r\n")


def test_head_read_a_byte_at_a_time():
    """
    A head (after empty lines) that arrives a byte at a time, its end
    split across reads, is read once complete, with its body.
    """
    harness = HubHarness()
    _, worker = harness.worker()
    channel, _ = harness.consumer()
    data = b"\r\nPOST /t HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi"
    for i in range(len(data)):
        channel.dataReceived(data[i : i + 1])
    assert worker.value() == (
        b"POST /t HTTP/1.1\r\nContent-Length: 2\r\nHost: h\r\nX-Forwarded-For: 127.0.0.5\r\n"
        b"X-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\n\r\nhi"
    )


@pytest.mark.parametrize(
    "method, code, allow",
    [(b"OPTIONS", b"200", None), (b"GET", b"405", b"OPTIONS"), (b"POST", b"405", b"OPTIONS")],
)
def test_asterisk_target_answered_by_the_hub(method, code, allow):
    """
    C{OPTIONS *} asks about the server, not the app: the hub answers it
    (any other method with C{*} gets 405), queues nothing, and keeps the
    connection for the next request.
    """
    harness = HubHarness()
    body = b"Content-Length: 0\r\n" if method == b"POST" else b""
    _, consumer = harness.consumer(method + b" * HTTP/1.1\r\nHost: hub\r\n" + body + b"\r\n")
    assert status(consumer).split(b" ")[1] == code
    assert header(consumer, b"Content-Length") == b"0"
    assert header(consumer, b"Allow") == allow
    assert consumer.value().endswith(b"\r\n\r\n")
    assert harness.pool.queued == 0 and not consumer.disconnecting
