"""
send_now (pothead/sockets.py) over a real loopback socket: a message is
on the wire before the reactor turns again, what the socket cannot take
waits for the reactor, and a connection being closed is left to it.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

from pothead.http.sockets import send_now
from tests.harness import wait_for
from tests.loopback import Raw, received_without_reactor

pytestmark = pytest.mark.net

MIB = 1024 * 1024


async def connected(raw: Raw) -> Protocol:
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", raw.port, timeout=5)
    protocol = await connectProtocol(endpoint, Protocol())
    raw.accept()
    return protocol


@pytest_twisted.ensureDeferred
async def test_sent_before_the_reactor_turns():
    """
    Written then sent now, a message can be read by the peer while the
    reactor is still busy in this very call; written alone, it cannot.
    """
    raw = Raw()
    try:
        protocol = await connected(raw)
        protocol.transport.write(b"buffered")
        # No event marks bytes not sent; the reactor cannot turn during this
        # call, so a bounded 0.2 s read shows that they wait for it.
        assert received_without_reactor(raw.peer, 0.2) == b""
        send_now(protocol.transport)
        assert received_without_reactor(raw.peer, 5) == b"buffered"
        protocol.transport.write(b"now")
        send_now(protocol.transport)
        assert received_without_reactor(raw.peer, 5) == b"now"
        protocol.transport.loseConnection()
    finally:
        raw.close()


@pytest_twisted.ensureDeferred
async def test_what_the_socket_cannot_take_waits_for_the_reactor():
    """
    More than the socket buffers hold is partly sent at once and wholly
    sent later by the reactor, in order.
    """
    raw = Raw()
    try:
        protocol = await connected(raw)
        message = bytes(range(256)) * (32 * MIB // 256)
        protocol.transport.write(message)
        send_now(protocol.transport)
        received = bytearray(received_without_reactor(raw.peer, 5))
        assert 0 < len(received) < len(message)
        raw.peer.setblocking(False)

        def drain() -> bool:
            try:
                while chunk := raw.peer.recv(MIB):
                    received.extend(chunk)
            except BlockingIOError:
                pass
            return len(received) == len(message)

        await wait_for(drain, timeout=30, what="the whole message")
        assert received == message
        protocol.transport.loseConnection()
    finally:
        raw.close()


@pytest_twisted.ensureDeferred
async def test_closing_connection_left_to_the_reactor():
    """
    After loseConnection, send_now does nothing: the reactor sends the
    rest and then closes the connection, as it would have anyway.
    """
    raw = Raw()
    try:
        protocol = await connected(raw)
        lost: list = []
        protocol.connectionLost = lost.append
        protocol.transport.write(b"last words")
        protocol.transport.loseConnection()
        send_now(protocol.transport)
        # No event marks bytes not sent; the reactor cannot turn during this
        # call, so a bounded 0.2 s read shows that send_now sent nothing.
        assert received_without_reactor(raw.peer, 0.2) == b""
        await wait_for(lambda: lost, timeout=5, what="the connection's end")
        raw.peer.settimeout(5)
        assert raw.peer.recv(100) == b"last words"
        assert raw.peer.recv(100) == b""
    finally:
        raw.close()
