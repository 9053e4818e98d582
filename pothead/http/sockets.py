"""
How pothead's connections use their sockets: tuned for small messages
that must not wait, and sent as soon as a message is complete.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReadWriteDescriptor, ITCPTransport


def tune_tcp(transport) -> None:
    """
    Turn on TCP keepalive, so that a peer that vanished without a word (a
    dead host, a dropped NAT mapping) is noticed on an idle connection; and
    turn off Nagle's algorithm, so that the last small segment of a message
    is never held back waiting for the peer's delayed ACK.
    """
    if ITCPTransport.providedBy(transport):
        transport.setTcpKeepAlive(True)
        transport.setTcpNoDelay(True)


def send_now(transport) -> None:
    """
    Send what C{transport} holds now, rather than on the reactor's next
    turn.

    A Twisted transport only buffers what it is given and sends it once
    the reactor next finds the socket writable: one more trip through the
    reactor for every message, on the path of every request (a consumer's
    request to the worker, the worker's answer, the answer to the
    consumer).  Called where a message is complete, this sends it as the
    reactor would, from the same buffer: what the socket cannot take now
    stays buffered for the reactor, and a send that fails is failed again
    by the reactor, which then closes the connection as usual.  A
    connection being closed is left to the reactor, which must see its
    buffer drain to close it.

    C{doWrite} is public (L{IWriteDescriptor}) but meant for the reactor;
    Twisted has no public way to say "send now", and none to tell whether
    a transport still holds bytes, which sending around its buffer would
    need to keep order.  So this calls it, relying on (pinned by
    tests/test_twisted_private.py) a TCP transport's C{doWrite}, called
    directly, sending from the buffer C{write} filled, keeping what the
    socket cannot take for the reactor, and returning without raising;
    and on its C{disconnecting}, set by C{loseConnection}.  A transport
    that is not a descriptor (TLS, a test's) is left to the reactor.
    """
    if IReadWriteDescriptor.providedBy(transport) and not transport.disconnecting:
        transport.doWrite()
