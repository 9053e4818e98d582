"""
The connection limits: ports that stop accepting at the limit, idle
kept-alive consumer connections closed for ones waiting (never a busy
one), and attaches beyond --max-slots refused with 503.

The waiting connections are real: a client connected to a real listening
socket on 127.0.0.1 that nobody accepts.
"""

from __future__ import annotations

import socket

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from pothead.attach import attach_request
from pothead.hub.connection_limit import SWEEP_INTERVAL, ConnectionLimit
from tests.harness import HubHarness, header, status


class Port:
    """A listening port as a L{ConnectionLimit} sees it, on a real socket."""

    def __init__(self) -> None:
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.reading = True

    def fileno(self) -> int:
        return self.socket.fileno()

    def stopReading(self) -> None:
        self.reading = False

    def startReading(self) -> None:
        self.reading = True

    def knock(self) -> socket.socket:
        """A client whose connection waits in the backlog."""
        return socket.create_connection(self.socket.getsockname(), timeout=5)


class Connection:
    """A counted connection: idle since some time, or busy (L{None})."""

    def __init__(self, limit: ConnectionLimit, idle_since: float | None) -> None:
        self.limit = limit
        self.since = idle_since
        self.closed = False
        limit.opened(self)

    def idle_since(self) -> float | None:
        return self.since

    def close_idle(self) -> None:
        self.closed = True
        self.limit.closed(self)


@pytest.fixture
def port():
    port = Port()
    yield port
    port.socket.close()


@pytest.mark.net
def test_ports_stop_at_the_limit_and_resume_below_it(port):
    """Every port of the group stops accepting at the limit, and accepts again once one closes."""
    clock = Clock()
    limit = ConnectionLimit(2, clock, "consumer")
    other = Port()
    limit.add_port(port)
    limit.add_port(other)
    first = Connection(limit, None)
    assert port.reading and other.reading and not limit.full
    second = Connection(limit, None)
    assert limit.full and not port.reading and not other.reading
    limit.closed(first)
    assert port.reading and other.reading and not limit.full
    limit.closed(second)
    clock.advance(1.0)  # the log line's interval
    assert not clock.getDelayedCalls(), "the sweep still runs below the limit"
    other.socket.close()


@pytest.mark.net
def test_port_added_at_the_limit_does_not_accept(port):
    """A port that starts listening while the limit is full starts paused."""
    limit = ConnectionLimit(1, Clock(), "consumer")
    Connection(limit, None)
    limit.add_port(port)
    assert not port.reading


@pytest.mark.net
def test_idle_connections_closed_only_for_waiting_ones(port):
    """
    At the limit with nobody waiting, idle connections stay; once a
    connection waits, the oldest idle one is closed, never a busy one.
    """
    clock = Clock()
    limit = ConnectionLimit(3, clock, "consumer")
    limit.add_port(port)
    busy = Connection(limit, None)
    newer = Connection(limit, 20.0)
    older = Connection(limit, 10.0)
    clock.advance(SWEEP_INTERVAL * 10)
    assert not (busy.closed or newer.closed or older.closed)
    with port.knock():
        clock.advance(SWEEP_INTERVAL)
        assert older.closed and not newer.closed and not busy.closed
        assert port.reading
        # Accepted, say, and the limit full again: the waiting one is
        # still in the backlog (nobody accepts here), so the next idle
        # connection goes too; the busy one stays.
        Connection(limit, None)
        clock.advance(SWEEP_INTERVAL)
        assert newer.closed and not busy.closed


@pytest.mark.net
def test_a_crowd_is_let_in_faster(port):
    """While connections keep waiting, each sweep closes twice as many idle ones as the last."""
    clock = Clock()
    limit = ConnectionLimit(8, clock, "consumer")
    limit.add_port(port)
    idle = [Connection(limit, float(i)) for i in range(8)]
    with port.knock():
        closed = []
        for _ in range(3):
            Connection(limit, None)  # the limit refilled by a newcomer
            clock.advance(SWEEP_INTERVAL)
            closed.append(sum(c.closed for c in idle))
    assert closed == [1, 3, 7]
    assert [c.closed for c in idle] == [True] * 7 + [False]


@pytest.mark.unit
def test_consumer_connections_counted_and_idle_only_between_requests():
    """
    The hub counts every consumer connection; one is idle (closable for
    room) only once it has answered a request and nothing of another has
    arrived.
    """
    harness = HubHarness(max_connections=10)
    limit = harness.hub.consumer_connections
    fresh, _ = harness.consumer()
    channel, transport = harness.consumer(b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n")
    assert limit.connections == {fresh, channel}
    assert status(transport) == b"HTTP/1.1 200 OK"
    assert fresh.idle_since() is None
    assert channel.idle_since() == harness.clock.seconds()
    channel.dataReceived(b"GET / HT")
    assert channel.idle_since() is None
    channel.connectionLost(Failure(ConnectionError()))
    assert limit.connections == {fresh}


@pytest.mark.unit
def test_idle_consumer_closed_for_room():
    """A consumer connection closed to make room closes as any idle one does."""
    harness = HubHarness()
    channel, transport = harness.consumer(b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n")
    channel.close_idle()
    assert transport.disconnecting


@pytest.mark.unit
def test_attach_beyond_max_slots_is_503():
    """With --max-slots slots attached, a further attach is refused 503 with Retry-After."""
    harness = HubHarness(max_slots=1, retry_after=7)
    _, first = harness.worker()
    assert len(harness.pool.slots) == 1
    protocol = harness.workers.buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.9", 6001))
    protocol.makeConnection(transport)
    protocol.dataReceived(attach_request("hub", "default", None, "second"))
    assert status(transport) == b"HTTP/1.1 503 Service Unavailable"
    assert header(transport, b"Retry-After") == b"7"
    assert transport.disconnecting and len(harness.pool.slots) == 1
