"""
send_now (pothead/sockets.py) over a real loopback socket: a message is
on the wire before the reactor turns again, what the socket cannot take
waits for the reactor, and a connection being closed is left to it.
"""

from __future__ import annotations

import socket

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

from pothead.http.sockets import send_now
from tests.conftest import wait_for

MIB = 1024 * 1024


class Raw:
    """
    A plain listening socket, read without the reactor.
    """

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.peer: socket.socket | None = None

    def accept(self) -> socket.socket:
        self.listener.settimeout(5)
        self.peer, _ = self.listener.accept()
        self.peer.settimeout(5)
        return self.peer

    def close(self) -> None:
        if self.peer is not None:
            self.peer.close()
        self.listener.close()


async def connected(raw: Raw) -> Protocol:
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", raw.port, timeout=5)
    protocol = await connectProtocol(endpoint, Protocol())
    raw.accept()
    return protocol


def received_without_reactor(peer: socket.socket, timeout: float) -> bytes:
    peer.settimeout(timeout)
    try:
        return peer.recv(65536)
    except TimeoutError:
        return b""


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
        assert received_without_reactor(raw.peer, 0.2) == b""
        await wait_for(lambda: lost, timeout=5, what="the connection's end")
        raw.peer.settimeout(5)
        assert raw.peer.recv(100) == b"last words"
        assert raw.peer.recv(100) == b""
    finally:
        raw.close()
