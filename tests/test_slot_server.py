"""
What a slot serves (pothead/slot_server.py): the hub's requests read by
pothead's own server and handed to twisted.web.wsgi.  Every response must
be the one twisted.web itself would write for the same app and request,
byte for byte but for the C{Date}; and a request cut off by the hub must
end the app's response quietly.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IReadWriteDescriptor
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.server import Site
from twisted.web.wsgi import WSGIResource
from zope.interface import implementer

from pothead.worker.body_pipe import HIGH_WATER
from pothead.worker.flow import FlowControlledWSGIResource, flow_controlled
from pothead.worker.slot_server import SlotServer, Unattached, WSGIRequest
from tests.harness import InThisThread, wait_for
from tests.loopback import Raw, received_without_reactor

PEER = IPv4Address("TCP", "127.0.0.1", 4040)


class Attached(Unattached):
    """
    An attachment that records when its channel turns idle, and may be
    detaching.
    """

    def __init__(self, detaching: bool = False) -> None:
        self.idle: list[bool] = []
        self._detaching = detaching

    def channel_idle(self) -> None:
        self.idle.append(True)

    def detaching(self) -> bool:
        return self._detaching


def served(factory, request: bytes, transport: StringTransport | None = None,
           attachment: Attached | None = None) -> tuple[bytes, StringTransport]:
    """
    What C{factory}'s protocol answers to C{request}, the app run at once;
    on an attached connection if C{attachment} is given.
    """
    transport = transport or StringTransport(peerAddress=PEER)
    channel = factory.buildProtocol(PEER) if attachment is None else factory.serve(attachment)
    channel.makeConnection(transport)
    channel.dataReceived(request)
    return transport.value(), transport


def without_date(response: bytes) -> bytes:
    return b"\r\n".join(line for line in response.split(b"\r\n") if not line.startswith(b"Date: "))


def answer_both_ways(app, request: bytes) -> tuple[bytes, bytes]:
    now = InThisThread()
    ours, _ = served(SlotServer(FlowControlledWSGIResource(now, now, flow_controlled(app)), Clock()),
                     request)
    theirs, _ = served(Site(WSGIResource(now, now, app), timeout=None), request)
    return without_date(ours), without_date(theirs)


def fails_before_start(environ, start_response):
    raise RuntimeError("no answer")


def fails_after_start(environ, start_response):
    start_response("200 OK", [])
    yield b"half"
    raise RuntimeError("cut off")


def no_length(environ, start_response):
    start_response("201 Created", [("x-lower", "a"), ("Set-Cookie", "a=1"), ("X-Lower", "b"),
                                   ("Set-Cookie", "b=2"), ("www-authenticate", "Basic")])
    return [b"one", b"", b"two"]


def empty(environ, start_response):
    start_response("204 No Content", [("Content-Length", "3")])
    return [b"not sent"]


def environ_echo(environ, start_response):
    keys = ("PATH_INFO", "QUERY_STRING", "SCRIPT_NAME", "SERVER_NAME", "SERVER_PORT",
            "CONTENT_LENGTH", "CONTENT_TYPE", "HTTP_X_TWICE", "REQUEST_METHOD",
            "SERVER_PROTOCOL", "wsgi.url_scheme")
    body = "\n".join(f"{k}={environ.get(k)!r}" for k in keys).encode()
    body += b"\nbody=" + environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


@pytest.mark.unit
@pytest.mark.parametrize(
    "app, request_bytes",
    [
        (fails_before_start, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"),
        (fails_after_start, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"),
        (no_length, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"),
        (no_length, b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n"),
        (empty, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"),
        (environ_echo, b"GET /a%20b/%2Fc?x=%20&y HTTP/1.1\r\nHost: [::1]:8080\r\n"
                       b"X-Twice: 1\r\nx-twice: 2\r\n\r\n"),
        (environ_echo, b"POST /p HTTP/1.1\r\nHost: example.org\r\nContent-Type: text/plain\r\n"
                       b"Content-Length: 5\r\n\r\nhello"),
        (environ_echo, b"GET / HTTP/1.1\r\n\r\n"),
    ],
    ids=["error-before-start", "error-after-start", "chunked-grouped-headers", "head",
         "204-with-body", "environ-path-query-host", "environ-body", "environ-no-host"],
)
def test_response_as_twisted_web_writes_it(app, request_bytes):
    """
    The same app and request give the same bytes from a slot as from
    twisted.web's own Site: status line, header order and names, framing
    and body; an app failing after its first chunk leaves a response cut
    short in both.
    """
    ours, theirs = answer_both_ways(app, request_bytes)
    assert ours == theirs
    assert ours.startswith(b"HTTP/1.1 ")


@pytest.mark.unit
def test_error_before_start_leaves_connection_open():
    """
    An app failing before it answered gets a 500, and the slot takes the
    hub's next request.
    """
    now = InThisThread()
    server = SlotServer(WSGIResource(now, now, fails_before_start), Clock())
    answer, transport = served(server, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert not transport.disconnecting


class Held:
    """
    A resource that keeps the requests it is given, unanswered.
    """

    def __init__(self) -> None:
        self.requests: list[WSGIRequest] = []

    def render(self, request: WSGIRequest) -> None:
        self.requests.append(request)


@pytest.mark.unit
def test_hub_gone_mid_response():
    """
    A request whose connection is lost fails its notifyFinish Deferreds
    (so twisted.web.wsgi stops iterating the app), and later writes and
    the finish are dropped without error.
    """
    held = Held()
    server = SlotServer(held, Clock())
    answer, transport = served(server, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    (request,) = held.requests
    before, outcome = request.notifyFinish(), []
    before.addBoth(outcome.append)
    request.write(b"some")
    request.channel.connectionLost(Failure(ConnectionError()))
    assert isinstance(outcome[0], Failure)
    after = []
    request.notifyFinish().addBoth(after.append)
    assert isinstance(after[0], Failure)
    written = transport.value()
    request.write(b"more")
    request.finish()
    assert transport.value() == written and not request.finished


@pytest.mark.unit
def test_finished_request_notifies_and_slot_turns_idle():
    """
    finish() fires notifyFinish and, once no request is in progress,
    tells the slot it is idle.
    """
    held = Held()
    server = SlotServer(held, Clock())
    attachment = Attached()
    _, transport = served(server, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", attachment=attachment)
    (request,) = held.requests
    idle = attachment.idle
    outcome: list = []
    request.notifyFinish().addBoth(outcome.append)
    assert request.channel.busy
    request.setResponseCode(202)
    request.finish()
    assert outcome == [None] and idle == [True] and not request.channel.busy
    assert transport.value().startswith(b"HTTP/1.1 202 Accepted\r\n")
    later: list = []
    request.notifyFinish().addBoth(later.append)
    assert later == [None]


@pytest.mark.unit
def test_detaching_slot_serves_no_request_sent_after_its_response():
    """
    A slot that detaches once idle (one job per admission, or draining)
    does not serve a request the hub sent before the response was
    finished: it turns idle, and its detach notice answers that request.
    """
    held = Held()
    server = SlotServer(held, Clock())
    attachment = Attached(detaching=True)
    _, transport = served(server, b"GET /one HTTP/1.1\r\nHost: h\r\n\r\n", attachment=attachment)
    (request,) = held.requests
    channel = request.channel
    idle = attachment.idle
    channel.dataReceived(b"GET /two HTTP/1.1\r\nHost: h\r\n\r\n")
    request.finish()
    assert [r.uri for r in held.requests] == [b"/one"] and idle == [True]
    assert not channel.busy


@pytest.mark.unit
def test_request_sent_during_a_response_is_served_after_it():
    """
    A slot that stays attached serves the hub's next request, even one
    sent before the last response's finish (the hub had it whole).
    """
    held = Held()
    server = SlotServer(held, Clock())
    served(server, b"GET /one HTTP/1.1\r\nHost: h\r\n\r\n")
    (first,) = held.requests
    first.channel.dataReceived(b"GET /two HTTP/1.1\r\nHost: h\r\n\r\n")
    assert len(held.requests) == 1
    first.finish()
    assert [r.uri for r in held.requests] == [b"/one", b"/two"]


async def held_request(raw: Raw):
    """
    A slot's channel connected to C{raw} over loopback, the peer's socket,
    and the request the peer sent, held unanswered.
    """
    held = Held()
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", raw.port, timeout=5)
    channel = await connectProtocol(endpoint, SlotServer(held, reactor).buildProtocol(PEER))
    peer = raw.accept()
    peer.sendall(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    await wait_for(lambda: held.requests, what="the request")
    (request,) = held.requests
    return channel, peer, request


@pytest.mark.net
@pytest_twisted.ensureDeferred
async def test_body_of_known_length_sent_at_its_last_byte():
    """
    Over a real socket: the write that completes a body of declared
    length is on the wire before finish() and before the reactor turns.
    """
    raw = Raw()
    try:
        channel, peer, request = await held_request(raw)
        request.responseHeaders.setRawHeaders(b"Content-Length", [b"2"])
        request.write(b"ok")
        received = received_without_reactor(peer, 5)
        assert received.startswith(b"HTTP/1.1 200 OK\r\n")
        assert received.endswith(b"\r\n\r\nok") and not request.finished
        request.finish()
        channel.transport.loseConnection()
    finally:
        raw.close()


@pytest.mark.net
@pytest_twisted.ensureDeferred
async def test_body_of_unknown_length_waits_for_the_reactor():
    """
    Over a real socket: a write to a body of unknown length is not on the
    wire before the reactor turns; after finish(), the reactor sends the
    whole response.
    """
    raw = Raw()
    try:
        channel, peer, request = await held_request(raw)
        request.write(b"ok")
        # No event marks bytes not sent; the reactor cannot turn during this
        # call, so a bounded 0.2 s read shows that they wait for it.
        assert received_without_reactor(peer, 0.2) == b""
        request.finish()
        received = bytearray()
        peer.setblocking(False)

        def whole() -> bool:
            try:
                received.extend(peer.recv(65536))
            except BlockingIOError:
                pass
            return received.endswith(b"\r\n0\r\n\r\n")

        await wait_for(whole, what="the whole response")
        assert received.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"\r\n\r\n2\r\nok\r\n0\r\n\r\n" in received
        channel.transport.loseConnection()
    finally:
        raw.close()


@implementer(IReadWriteDescriptor)
class SendCountingTransport(StringTransport):
    """
    A transport that, like a socket's, can be told to send what it holds
    now; it counts how often it is told.
    """

    sends = 0

    def doWrite(self) -> None:
        self.sends += 1


def known_length(environ, start_response):
    start_response("200 OK", [("Content-Length", "4")])
    return [b"ab", b"cd"]


@pytest.mark.unit
@pytest.mark.parametrize("app", [known_length, no_length, environ_echo])
def test_one_send_per_response(app):
    """
    A response is sent once, when complete: at its last byte if its
    length is known, else at finish; finish after the last byte of a
    known length sends nothing more (not even an empty C{send}).
    """
    now = InThisThread()
    transport = SendCountingTransport(peerAddress=PEER)
    response, _ = served(SlotServer(FlowControlledWSGIResource(now, now, flow_controlled(app)), Clock()),
                         b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", transport)
    assert response.startswith(b"HTTP/1.1 20") and response.endswith((b"abcd", b"0\r\n\r\n", b"body="))
    assert transport.sends == 1


@pytest.mark.unit
def test_body_still_arriving_is_read_by_the_app_as_it_comes():
    """
    A request whose body has not all arrived is handed to the app at its
    head; the app reads what has arrived, and the rest as it comes.
    """
    held = Held()
    server = SlotServer(held, Clock())
    served(server, b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nfirst")
    (request,) = held.requests
    assert request.content.read(5) == b"first"
    request.channel.dataReceived(b"-last")
    assert request.content.read() == b"-last"
    request.finish()
    assert not request.channel.busy


@pytest.mark.unit
def test_answer_before_the_body_ends_drops_the_rest():
    """
    An app may answer before it reads the whole body: the response goes
    out at once, the rest of the body is read and dropped, and the slot
    serves the hub's next request only after it (never taking body bytes
    for a request).
    """
    held = Held()
    server = SlotServer(held, Clock())
    attachment = Attached()
    _, transport = served(
        server, b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nGET /",
        attachment=attachment,
    )
    (request,) = held.requests
    idle = attachment.idle
    channel = request.channel
    request.setResponseCode(413)
    request.finish()
    assert transport.value().startswith(b"HTTP/1.1 413 ")
    assert channel.busy and idle == []
    channel.dataReceived(b" HTTPGET /next HTTP/1.1\r\nHost: h\r\n\r\n")
    assert [r.uri for r in held.requests] == [b"/up", b"/next"]
    held.requests[1].finish()
    assert idle == [True] and not channel.busy


@pytest.mark.unit
def test_hub_gone_mid_body_fails_the_apps_read():
    held = Held()
    server = SlotServer(held, Clock())
    served(server, b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nhalf")
    (request,) = held.requests
    request.channel.connectionLost(Failure(ConnectionError()))
    assert request.content.read(4) == b"half"
    with pytest.raises(ConnectionLost):
        request.content.read(1)


class ClockAndThreads(Clock):
    """
    A fake clock whose C{callFromThread} runs what it is given at once.
    """

    def callFromThread(self, f, *args) -> None:
        f(*args)


@pytest.mark.unit
def test_app_failing_mid_response_lets_the_connection_close():
    """
    An app that fails after its response started (twisted.web.wsgi then
    calls loseConnection) with a large body unread: the body is given up
    and the connection read again, since a TLS close must read the hub's
    close_notify behind the rest of the body; a waiting read fails.
    """
    held = Held()
    server = SlotServer(held, ClockAndThreads())
    length = 3 * HIGH_WATER
    _, transport = served(server, b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % length)
    (request,) = held.requests
    request.channel.dataReceived(b"x" * (HIGH_WATER + 10))
    assert transport.producerState == "paused"
    request.write(b"started")
    request.loseConnection()
    assert transport.producerState == "producing" and transport.disconnecting
    request.content.read(HIGH_WATER + 10)
    with pytest.raises(ConnectionLost):
        request.content.read(1)


@pytest.mark.unit
def test_malformed_streamed_body_refused_and_given_up():
    held = Held()
    server = SlotServer(held, ClockAndThreads())
    _, transport = served(server, b"POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                                  b"3\r\nabc\r\n")
    (request,) = held.requests
    request.channel.dataReceived(b"zz\r\n")
    assert b"400 Bad Request" in transport.value() and transport.disconnecting
    assert request.content.read(3) == b"abc"
    with pytest.raises(ConnectionLost):
        request.content.read(1)
