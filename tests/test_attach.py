"""
The attach handshake at both ends, driven through in-memory transports.
"""

from __future__ import annotations

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.web.wsgi import WSGIResource

from pothead.attach import MAX_HEAD_BYTES, attach_request
from pothead.hub.attach_server import WorkerPortFactory
from pothead.hub.connection_limit import ConnectionLimit
from pothead.hub.limits import Limits
from pothead.hub.metrics import HubMetrics
from pothead.hub.pool import Pool
from pothead.tokens import TokenCheck
from pothead.worker.attach_client import WorkerSlot
from pothead.worker.slot_server import SlotServer
from tests.harness import InThisThread

pytestmark = pytest.mark.unit

ATTACH_TIMEOUT = 5.0


def hub_connection(token=None):
    """
    A worker-port protocol on a fresh in-memory transport, with its pool
    and clock.
    """
    clock = Clock()
    pool = Pool("default", clock)
    factory = WorkerPortFactory({"default": pool}, TokenCheck(token), Limits(attach_timeout=ATTACH_TIMEOUT), clock, ConnectionLimit(100, clock, "worker-port"), HubMetrics())
    protocol = factory.buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.9", 5555))
    protocol.makeConnection(transport)
    return protocol, transport, pool, clock


def request(*lines: bytes) -> bytes:
    return b"\r\n".join(lines) + b"\r\n\r\n"


ATTACH = (
    b"GET /pothead/v1/attach/default HTTP/1.1",
    b"Host: hub",
    b"Connection: Upgrade",
    b"Upgrade: ptth",
    b"ALPN: http%2F1.1",
)


def test_attach_accepted():
    """
    A well-formed attach is answered 101 with the offered token and the
    connection becomes an idle slot of its pool.
    """
    protocol, transport, pool, _ = hub_connection()
    protocol.dataReceived(request(*ATTACH))
    assert transport.value() == (
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
        b"Upgrade: ptth\r\nALPN: http%2F1.1\r\n\r\n"
    )
    assert pool.idle == 1
    assert not transport.disconnecting


def test_worker_request_bytes_are_accepted():
    """
    The exact bytes a pothead worker sends are an attach the hub accepts,
    token included.
    """
    protocol, transport, pool, _ = hub_connection(token="t0k")
    protocol.dataReceived(attach_request("hub:4040", "default", "t0k", "host/1/0"))
    assert transport.value().startswith(b"HTTP/1.1 101 ")
    assert pool.idle == 1


def test_attach_arriving_in_pieces():
    """
    An attach split across many small reads is still recognised.
    """
    protocol, transport, pool, _ = hub_connection()
    for byte in request(*ATTACH):
        protocol.dataReceived(bytes([byte]))
    assert transport.value().startswith(b"HTTP/1.1 101 ")
    assert pool.idle == 1


def test_legacy_rhttp_token_and_post():
    """
    The older Reverse HTTP upgrade token and POST with an empty body are
    accepted, and the answer names the token offered.
    """
    protocol, transport, pool, _ = hub_connection()
    protocol.dataReceived(
        request(
            b"POST /pothead/v1/attach/ HTTP/1.1",
            b"Host: hub",
            b"Content-Length: 0",
            b"Connection: Upgrade",
            b"Upgrade: PTTH/1.0",
        )
    )
    assert b"\r\nUpgrade: PTTH/1.0\r\n" in transport.value()
    assert transport.value().startswith(b"HTTP/1.1 101 ")
    assert pool.idle == 1


def status_of(transport) -> bytes:
    return transport.value().split(b"\r\n", 1)[0]


@pytest.mark.parametrize(
    "lines, status",
    [
        ((b"GET / HTTP/1.1", b"Host: hub"), b"HTTP/1.1 400 Bad Request"),
        ((b"GET /pothead/v1/attach/default HTTP/1.0", b"Upgrade: ptth"), b"HTTP/1.1 400 Bad Request"),
        ((b"PUT /pothead/v1/attach/default HTTP/1.1",) + ATTACH[1:], b"HTTP/1.1 400 Bad Request"),
        ((b"POST /pothead/v1/attach/default HTTP/1.1", b"Content-Length: 5") + ATTACH[1:],
         b"HTTP/1.1 400 Bad Request"),
        ((b"GET /pothead/v1/attach/other HTTP/1.1",) + ATTACH[1:], b"HTTP/1.1 404 Not Found"),
        (ATTACH[:3], b"HTTP/1.1 426 Upgrade Required"),
        (ATTACH[:3] + (b"Upgrade: websocket",), b"HTTP/1.1 426 Upgrade Required"),
        (ATTACH[:4] + (b"ALPN: h2",), b"HTTP/1.1 426 Upgrade Required"),
        ((ATTACH[0], ATTACH[1], ATTACH[3]), b"HTTP/1.1 400 Bad Request"),
        ((b"garbage",), b"HTTP/1.1 400 Bad Request"),
    ],
)
def test_refusals(lines, status):
    """
    Anything that is not an acceptable attach gets its status and a closed
    connection, and never becomes a slot.
    """
    protocol, transport, pool, _ = hub_connection()
    protocol.dataReceived(request(*lines))
    assert status_of(transport) == status
    assert b"\r\nConnection: close\r\n" in transport.value()
    assert transport.disconnecting
    assert pool.idle == 0


@pytest.mark.parametrize("authorization", [None, b"Bearer wrong", b"Basic c2VjcmV0", b"Bearer secret2"])
def test_token_required(authorization):
    """
    With a token set, a missing or wrong token gets 401 with
    WWW-Authenticate: Bearer, before anything else is revealed.
    """
    protocol, transport, pool, _ = hub_connection(token="secret")
    lines = (b"GET /pothead/v1/attach/no-such-pool HTTP/1.1",) + ATTACH[1:]
    if authorization is not None:
        lines += (b"Authorization: " + authorization,)
    protocol.dataReceived(request(*lines))
    assert status_of(transport) == b"HTTP/1.1 401 Unauthorized"
    assert b"\r\nWWW-Authenticate: Bearer\r\n" in transport.value()
    assert pool.idle == 0


def test_attach_timeout():
    """
    A connection that does not finish its attach in time is dropped.
    """
    protocol, transport, pool, clock = hub_connection()
    protocol.dataReceived(ATTACH[0] + b"\r\n")
    clock.advance(ATTACH_TIMEOUT - 0.1)
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.disconnecting
    assert pool.idle == 0
    protocol.connectionLost(Failure(ConnectionError()))
    assert not clock.getDelayedCalls()


def test_silent_connection_waits_for_quiet_timeout():
    """
    A connection that has sent nothing (a worker waiting for admission) is
    kept until the quiet timeout; from its first byte, the attach timeout
    applies.
    """
    clock = Clock()
    pool = Pool("default", clock)
    factory = WorkerPortFactory({"default": pool}, TokenCheck(None), Limits(attach_timeout=ATTACH_TIMEOUT, quiet_timeout=100.0), clock, ConnectionLimit(100, clock, "worker-port"), HubMetrics())
    protocol = factory.buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.9", 5555))
    protocol.makeConnection(transport)
    clock.advance(99)
    assert not transport.disconnecting
    protocol.dataReceived(b"GET /pothead/v1/attach/default HTTP/1.1\r\n")
    clock.advance(ATTACH_TIMEOUT - 0.1)
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.disconnecting
    protocol.connectionLost(Failure(ConnectionError()))

    silent = factory.buildProtocol(None)
    silent_transport = StringTransport()
    silent.makeConnection(silent_transport)
    clock.advance(100.1)
    assert silent_transport.disconnecting
    silent.connectionLost(Failure(ConnectionError()))
    assert not clock.getDelayedCalls()


def test_timeout_cancelled_once_attached():
    """
    An attached slot is not dropped by the attach timeout.
    """
    protocol, transport, pool, clock = hub_connection()
    protocol.dataReceived(request(*ATTACH))
    assert not clock.getDelayedCalls()


def test_oversized_head_dropped():
    """
    A head larger than any real attach is dropped without waiting for the end.
    """
    protocol, transport, pool, _ = hub_connection()
    protocol.dataReceived(ATTACH[0] + b"\r\n")
    for i in range(MAX_HEAD_BYTES // 100 + 1):
        protocol.dataReceived(b"X-Filler-%d: %s\r\n" % (i, b"x" * 100))
    assert transport.disconnecting
    assert pool.idle == 0


def test_overlong_line_dropped():
    """
    A single endless header line is dropped once past the line limit.
    """
    protocol, transport, pool, _ = hub_connection()
    protocol.dataReceived(b"GET /" + b"a" * 100_000)
    assert transport.disconnecting


def test_unsolicited_bytes_from_idle_slot_drop_it():
    """
    A worker that sends bytes when no request is pending is dropped.
    """
    protocol, transport, pool, _ = hub_connection()
    protocol.dataReceived(request(*ATTACH) + b"HTTP/1.1 200 OK\r\n\r\n")
    assert transport.disconnecting
    protocol.connectionLost(Failure(ConnectionError()))
    assert pool.idle == 0


def hello(environ, start_response):
    start_response("200 OK", [("Content-Length", "2")])
    return [b"hi"]


def worker_connection():
    clock = Clock()
    now = InThisThread()
    server = SlotServer(WSGIResource(now, now, hello), clock)
    client = WorkerSlot(server, "default", "tok", "me/1/0", 3.0, clock).buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 4040))
    client.makeConnection(transport)
    return client, transport, clock


def test_worker_attaches_then_serves():
    """
    After a 101 the worker's connection serves HTTP: a request the hub
    sends down it gets the site's answer.
    """
    client, transport, clock = worker_connection()
    assert transport.value() == b""
    attached = client.attach()
    assert transport.value() == attach_request("127.0.0.1:4040", "default", "tok", "me/1/0")
    transport.clear()
    client.dataReceived(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: ptth\r\nConnection: Upgrade\r\n\r\n")
    assert attached.called and client.factory.refusals == 0
    client.dataReceived(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200 OK\r\n")
    assert transport.value().endswith(b"\r\n\r\nhi")
    client.connectionLost(Failure(ConnectionError()))
    assert not clock.getDelayedCalls()


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n",
    ],
)
def test_worker_attach_refused(answer):
    """
    Anything but a 101 naming ptth fails the attach and closes the
    connection.
    """
    client, transport, clock = worker_connection()
    attached = client.attach()
    client.dataReceived(answer)
    assert attached.called and client._channel is None
    assert transport.disconnecting
    assert client.factory.refusals == 1
    assert client.factory.retry_delay(1) >= 0.05


def test_worker_attach_timeout():
    """
    A hub that never answers the attach fails it after the timeout, and
    the worker's log says the hub did not answer in time.
    """
    client, transport, clock = worker_connection()
    attached = client.attach()
    with capturedLogs() as events:
        clock.advance(3.1)
    assert transport.disconnecting
    lines = [formatEvent(event) for event in events]
    assert "slot me/1/0 not attached: no answer from hub within 3s (--attach-timeout)" in lines
    client.connectionLost(Failure(ConnectionError()))
    assert attached.called and client._channel is None
    assert client.factory.refusals == 1
