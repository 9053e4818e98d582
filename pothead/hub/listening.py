"""
The hub's listening ports: each accepts only while its L{ConnectionLimit}
has room, and answers, rather than resets, a connection it has no
descriptor for.

Twisted's own answer to running out of descriptors (``EMFILE``) is to
free a reserved one, accept each waiting connection, close it at once and
log a line for each: the client sees a reset, and the log a flood.  Here
the reserve is used to answer each such connection with a fixed response
(a ``503`` with ``Retry-After``) before closing it, and the event is
logged as a count at most once a second.  The hub's descriptor budget
(L{pothead.hub.descriptors}) makes this the exception: it happens only when
something outside the budget holds descriptors.
"""

from __future__ import annotations

import errno
import os
import socket

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IReactorTime, IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

from pothead.hub.connection_limit import ConnectionLimit
from pothead.hub.tally import Tally

#: The most waiting connections answered in one go from the reserve.
_ANSWERS_AT_ONCE = 64

#: How long a port stops accepting when no descriptor is left even to
#: answer with, in seconds: the reactor would otherwise spin on it.
_BACK_OFF = 0.1


#: Endpoint types whose listen backlog can be set in their description.
_BACKLOG_TYPES = {"tcp", "tcp6", "ssl", "unix"}


def with_backlog(description: str, backlog: int) -> str:
    """
    An endpoint description with a listen backlog of C{backlog} unless it
    sets its own.

    Twisted's default is 50: connections waiting at the hub's connection
    limit beyond that would have their SYNs dropped, and retry only a
    second or more later.  HAProxy's default backlog is its ``maxconn``;
    the kernel caps it (``net.core.somaxconn``).
    """
    kind = description.split(":", 1)[0].lower()
    if kind not in _BACKLOG_TYPES or "backlog=" in description:
        return description
    return f"{description}:backlog={backlog}"


def overflow_response(retry_after: int) -> bytes:
    """
    What a connection the hub has no descriptor for is told.
    """
    body = b"The hub is at its connection limit; try again later.\n"
    return (
        b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: %d\r\n"
        b"Content-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
        % (retry_after, len(body), body)
    )


class DescriptorReserve:
    """
    One descriptor held back, to accept and answer connections with when
    no other is left.
    """

    def __init__(self, clock: IReactorTime, response: bytes) -> None:
        self._response = response
        self._clock = clock
        self._fd: int | None = None
        self._take()
        self.answered = Tally(
            clock, "out of descriptors ({detail}): answered {count} new connections 503",
        )

    def _take(self) -> None:
        try:
            self._fd = os.open(os.devnull, os.O_RDONLY)
        except OSError:
            self._fd = None

    def answer_waiting(self, listener: socket.socket, error: OSError) -> bool:
        """
        Answer the connections waiting on C{listener}, through the reserve.

        :return: whether the reserve was there to do it.
        """
        if self._fd is None:
            self._take()
            if self._fd is None:
                return False
        os.close(self._fd)
        self._fd = None
        try:
            for _ in range(_ANSWERS_AT_ONCE):
                try:
                    client, _ = listener.accept()
                except OSError:
                    break
                with client:
                    self._answer(client)
                self.answered.count(os.strerror(error.errno))
        finally:
            self._take()
        return True

    def _answer(self, client: socket.socket) -> None:
        """
        Send the response and close gently: what the client sent is read
        first, so that the close is not a reset that loses the response.
        """
        try:
            client.setblocking(False)
            client.send(self._response)
            client.shutdown(socket.SHUT_WR)
            client.recv(65536)
        except OSError:
            pass


class _LimitedSocket:
    """
    A listening socket as a Twisted port uses it, whose C{accept} says
    "nothing waiting" while the port's limit is full, and answers the
    waiting connections from the reserve when descriptors run out.
    """

    def __init__(self, sock: socket.socket, port: IListeningPort, limit: ConnectionLimit,
                 reserve: DescriptorReserve, clock: IReactorTime) -> None:
        self._socket = sock
        self._port = port
        self._limit = limit
        self._reserve = reserve
        self._clock = clock

    def accept(self) -> tuple[socket.socket, object]:
        if self._limit.full:
            raise BlockingIOError(errno.EAGAIN, "at the connection limit")
        try:
            return self._socket.accept()
        except OSError as error:
            if error.errno not in (errno.EMFILE, errno.ENFILE):
                raise
            if not self._reserve.answer_waiting(self._socket, error):
                self._limit.back_off(self._port, _BACK_OFF)
            raise BlockingIOError(errno.EAGAIN, "out of descriptors") from None

    def __getattr__(self, name: str):
        return getattr(self._socket, name)


class Listener(Service):
    """
    Listen on an endpoint while running, as ``strports.service`` does,
    with the port's accepting bounded by a L{ConnectionLimit} and its
    descriptor shortage answered from a L{DescriptorReserve}.

    A port that cannot be opened fails the hub's start, with the reason.
    """

    def __init__(self, endpoint: IStreamServerEndpoint, factory: Factory,
                 limit: ConnectionLimit, reserve: DescriptorReserve,
                 clock: IReactorTime) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self._limit = limit
        self._reserve = reserve
        self._clock = clock
        self._listening: Deferred[IListeningPort] | None = None
        self.port: IListeningPort | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        failures: list[Failure] = []
        self._listening = self.endpoint.listen(self.factory)
        self._listening.addCallbacks(self._listen, failures.append)
        if failures:
            failures[0].raiseException()

    def startService(self) -> None:
        super().startService()
        if self._listening is None:
            self.privilegedStartService()

    def _listen(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        sock = getattr(port, "socket", None)
        if sock is not None:
            port.socket = _LimitedSocket(sock, port, self._limit, self._reserve, self._clock)
        self._limit.add_port(port)
        return port

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        listening, self._listening = self._listening, None
        if listening is None:
            return None
        if self.port is None:
            listening.cancel()
            return None
        port, self.port = self.port, None
        self._limit.remove_port(port)
        return port.stopListening()
