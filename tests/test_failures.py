"""
Failures and drains, with real sockets on loopback: nothing is lost and
nothing runs twice by accident.
"""

from __future__ import annotations

import threading

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.endpoints import clientFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.web.client import ResponseFailed

from pothead.attach import DETACH_NOTICE
from tests.harness import WAIT, wait_for
from tests.http import Client, fetch
from tests.loopback import start_hub
from tests.peers import scripted_worker

pytestmark = pytest.mark.net


def counting_app(calls: list):
    def app(environ, start_response):
        calls.append(environ["REQUEST_METHOD"])
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Length", str(len(body) + 2))])
        return [b"ok" + body]

    return app


REQUEUE = b"HTTP/1.1 503 Service Unavailable\r\nPothead-Requeue: 1\r\nContent-Length: 4\r\n\r\nbusy"


@pytest.mark.parametrize("answer", [REQUEUE, DETACH_NOTICE], ids=["requeue", "detach-notice"])
@pytest_twisted.ensureDeferred
async def test_handed_back_post_served_elsewhere(running_hub, answer):
    """
    A POST a worker hands back (the requeue signal, or a draining worker's
    detach notice racing the request) is served by another worker; the
    consumer never sees the 503, and the app runs once.
    """
    scripted = await scripted_worker(running_hub, lambda transport: transport.write(answer))
    calls: list = []
    await running_hub.add_worker(counting_app(calls))
    response, body = await fetch("POST", running_hub.url + "/x", data=b"payload")
    assert (response.code, body) == (200, b"okpayload")
    assert scripted.requests == 1
    assert calls == ["POST"]
    await wait_for(lambda: not scripted.transport.connected, what="the handing-back slot to close")


@pytest.mark.parametrize("method, code", [("GET", 200), ("PUT", 200), ("POST", 502)])
@pytest_twisted.ensureDeferred
async def test_worker_lost_before_answering(running_hub, method, code):
    """
    A worker that vanishes before answering: an idempotent request is
    given to another worker, a POST gets 502 (it may have been processed).
    """
    scripted = await scripted_worker(running_hub, lambda transport: transport.abortConnection())
    calls: list = []
    await running_hub.add_worker(counting_app(calls))
    response, _ = await fetch(method, running_hub.url + "/x", data=b"")
    assert response.code == code
    assert scripted.requests == 1
    assert calls == ([method] if code == 200 else [])


@pytest_twisted.ensureDeferred
async def test_truncated_response_cuts_consumer_off(running_hub):
    """
    A worker that dies mid-body: the consumer's connection is cut, never
    handed a short body as if it were complete.
    """
    await scripted_worker(
        running_hub,
        lambda t: (t.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this"),
                   t.loseConnection()),
    )
    client = Client()
    try:
        # Cut before or after the head reached it: a failure either way.
        with pytest.raises(ResponseFailed):
            await client.request("GET", running_hub.url + "/x")
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_malformed_response_is_502_and_hub_goes_on(running_hub):
    """
    Garbage instead of a response gives 502; the next request is served.
    """
    await scripted_worker(running_hub, lambda t: t.write(b"NOT HTTP AT ALL\r\n\r\n"))
    calls: list = []
    client = Client()
    try:
        response, _ = await client.request("GET", running_hub.url + "/x")
        assert response.code == 502
        await running_hub.add_worker(counting_app(calls))
        response, _ = await client.request("GET", running_hub.url + "/y")
        assert response.code == 200
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_drain_finishes_in_flight_then_stops(running_hub):
    """
    Stopping a worker detaches its idle slot at once, lets the busy one
    finish its response, and only then completes.
    """
    gate = threading.Event()

    def app(environ, start_response):
        gate.wait(WAIT)
        start_response("200 OK", [("Content-Length", "4")])
        return [b"done"]

    service = await running_hub.add_worker(app, slots=2)
    running_hub._workers.remove(service)
    client = Client()
    try:
        in_flight = defer.ensureDeferred(client.request("POST", running_hub.url + "/", data=b"x"))
        await wait_for(lambda: running_hub.pool.idle == 1, what="one slot busy")
        stopped = service.stopService()
        await wait_for(lambda: len(running_hub.pool.slots) == 1, what="the idle slot to detach")
        assert not stopped.called
        gate.set()
        response, body = await in_flight
        assert (response.code, body) == (200, b"done")
        await stopped
        await wait_for(lambda: not running_hub.pool.slots, what="the busy slot to detach")
    finally:
        gate.set()
        await client.close()


@pytest_twisted.ensureDeferred
async def test_consumer_gone_while_queued_never_reaches_worker(running_hub):
    """
    A consumer that disconnects while queued is taken out of the queue.
    """
    gate = threading.Event()
    calls: list = []

    def app(environ, start_response):
        calls.append(environ["PATH_INFO"])
        if environ["PATH_INFO"] == "/first":
            gate.wait(WAIT)
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    await running_hub.add_worker(app)
    client = Client()
    try:
        first = defer.ensureDeferred(client.request("GET", running_hub.url + "/first"))
        await wait_for(lambda: running_hub.pool.idle == 0, what="the slot to be busy")
        quitter = defer.ensureDeferred(client.request("GET", running_hub.url + "/quitter"))
        await wait_for(lambda: running_hub.pool.queued == 1, what="the second request queued")
        quitter.cancel()
        await wait_for(lambda: running_hub.pool.queued == 0, what="the queue to empty")
        gate.set()
        response, _ = await first
        assert response.code == 200
    finally:
        gate.set()
        await client.close()
    with pytest.raises(ResponseFailed):
        await quitter
    assert calls == ["/first"]


@pytest_twisted.ensureDeferred
async def test_connection_close_answer_ends_slot(running_hub):
    """
    A worker that answers with Connection: close (in any spelling) gets
    its answer delivered and its slot closed, not reused.
    """
    scripted = await scripted_worker(
        running_hub,
        lambda t: t.write(b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\n"
                          b"Content-Length: 2\r\n\r\nok"),
    )
    response, body = await fetch("GET", running_hub.url + "/x")
    assert (response.code, body) == (200, b"ok")
    await wait_for(lambda: not scripted.transport.connected, what="the slot to close")
    assert running_hub.pool.slots == set()


@pytest_twisted.ensureDeferred
async def test_consumer_gone_while_served_drops_that_slot(running_hub):
    """
    A consumer that disconnects while its request runs has that worker
    connection closed (no half-read response can reach the next consumer);
    the worker reattaches once the abandoned app call has returned, and
    serves the next request.
    """
    gate = threading.Event()

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/slow":
            gate.wait(WAIT)
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    service = await running_hub.add_worker(app)
    (first_slot,) = running_hub.pool.slots
    connections = service.slots[0].clients
    (first_connection,) = connections
    client = Client()
    try:
        quitter = defer.ensureDeferred(client.request("GET", running_hub.url + "/slow"))
        await wait_for(lambda: running_hub.pool.idle == 0, what="the slot to be busy")
        quitter.cancel()
        await wait_for(lambda: first_slot not in running_hub.pool.slots, what="the slot to close")
        # The app is still running the abandoned request: the slot connects
        # again at once, but must not attach (and take a job its thread
        # cannot start) until then.
        await wait_for(lambda: connections and first_connection not in connections,
                       what="the slot to connect again")
        # No event marks a slot that waits for its app call: a bounded
        # 0.3 s shows that it does not attach meanwhile.
        await deferLater(reactor, 0.3, lambda: None)
        assert running_hub.pool.idle == 0
        gate.set()
        await wait_for(lambda: running_hub.pool.idle == 1, what="the worker to reattach")
        response, body = await client.request("GET", running_hub.url + "/next")
        assert (response.code, body) == (200, b"ok")
    finally:
        gate.set()
        await client.close()
    with pytest.raises(ResponseFailed):
        await quitter


@pytest_twisted.ensureDeferred
async def test_retries_zero_answers_502_for_get():
    """
    With --retries 0 even a GET whose worker vanished gets 502 at once.
    """
    from pothead.hub.limits import Limits

    running = await start_hub(limits=Limits(retries=0))
    try:
        await scripted_worker(running, lambda transport: transport.abortConnection())
        calls: list = []
        await running.add_worker(counting_app(calls))
        response, _ = await fetch("GET", running.url + "/x")
        assert response.code == 502
        assert calls == []
    finally:
        await running.stop()


class RawExchange(Protocol):
    """
    Send raw bytes, collect everything until the hub closes.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.received = b""
        self.closed = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.data)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason=None) -> None:
        self.closed.callback(self.received)


async def raw(running_hub, data: bytes) -> bytes:
    exchange = RawExchange(data)
    endpoint = clientFromString(reactor, f"tcp:127.0.0.1:{running_hub.consumer_port}")
    await endpoint.connect(Factory.forProtocol(lambda: exchange))
    return await exchange.closed.addTimeout(WAIT, reactor)


@pytest.mark.parametrize(
    "data, status",
    [
        (b"\x00\x01garbage\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nHost: h\r\nBad Header\r\n\r\n", b"400"),
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", b"414"),
        (b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X-Big: " + b"b" * 70_000 + b"\r\n\r\n", b"431"),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999\r\n\r\n", b"413"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", b"400"),
        (b"GET /caf\xe9 HTTP/1.1\r\nHost: h\r\n\r\n", b"400"),
        (b"GET /a\x7fb HTTP/1.1\r\nHost: h\r\n\r\n", b"400"),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n"
         b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nHost : h\r\n\r\n", b"400"),
        (b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", b"505"),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", b"501"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_input_over_a_socket(running_hub, data, status):
    """
    Hostile bytes on the consumer port get their status code and a closed
    connection, reach no worker, and the hub goes on serving others.
    """
    calls: list = []
    await running_hub.add_worker(counting_app(calls))
    answer = await raw(running_hub, data)
    assert answer.split(b"\r\n", 1)[0].split(b" ")[1] == status, answer[:200]
    assert calls == []
    response, body = await fetch("GET", running_hub.url + "/fine")
    assert (response.code, calls) == (200, ["GET"])
