"""
A limit on the connections open at once through a group of listening
ports: at the limit the ports stop accepting, and new connections wait in
the kernel's listen backlog until one closes, as with HAProxy's
``maxconn``; none is accepted only to be reset.

While connections wait, the oldest idle kept-alive connection is closed
to make room: a client must be ready to find a kept-alive connection
closed (RFC 9112 section 9.3.1), and one that waits for its first answer
is not.  A connection with a request under way is never closed for room.
"""

from __future__ import annotations

import select
from typing import Protocol

from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.internet.task import LoopingCall

from pothead.hub.tally import Tally

#: How often, at the limit, the hub looks for connections waiting to be
#: accepted, in seconds.
SWEEP_INTERVAL = 0.05

#: The most idle connections closed in one sweep.
MAX_ROOM = 1024


class LimitedConnection(Protocol):
    """
    What a L{ConnectionLimit} needs of the connections it counts.
    """

    #: When the connection last became idle after answering a request, if
    #: it has not begun another since: L{None} otherwise.
    def idle_since(self) -> float | None: ...

    def close_idle(self) -> None:
        """Close the connection, idle and kept alive, to make room."""


class ConnectionLimit:
    """
    Count the connections open through some listening ports, and stop
    those ports accepting while C{maximum} are open.

    :ivar maximum: the connections that may be open at once.
    :ivar connections: those open now.
    """

    def __init__(self, maximum: int, clock: IReactorTime, what: str) -> None:
        """
        :param what: what the connections are, for the log: ``consumer``.
        """
        self.maximum = maximum
        self.connections: set[LimitedConnection] = set()
        self._ports: list[IListeningPort] = []
        self._accepting = True
        self._clock = clock
        self._sweeper = LoopingCall(self._make_room)
        self._sweeper.clock = clock
        #: Idle connections to close in the next sweep that finds others
        #: waiting: doubled each time some still wait, so that a crowd
        #: is let in quickly and a single newcomer costs one.
        self._room = 1
        self._full = Tally(
            clock, f"{what} connections at the limit ({maximum}): new ones wait in the"
            " listen backlog until one closes (reached {count} times)",
        )
        self._closed_idle = Tally(
            clock, f"closed {{count}} idle kept-alive {what} connections for ones waiting",
        )

    def add_port(self, port: IListeningPort) -> None:
        """
        Count the connections C{port} accepts from now on.
        """
        self._ports.append(port)
        if not self._accepting:
            port.stopReading()

    def remove_port(self, port: IListeningPort) -> None:
        """
        C{port} is listening no more.
        """
        self._ports.remove(port)

    @property
    def full(self) -> bool:
        """Whether no more connections may be accepted now."""
        return len(self.connections) >= self.maximum

    def opened(self, connection: LimitedConnection) -> None:
        """
        A connection was accepted.
        """
        self.connections.add(connection)
        if self._accepting and self.full:
            self._accepting = False
            for port in self._ports:
                port.stopReading()
            self._full.count()
            self._sweeper.start(SWEEP_INTERVAL)

    def closed(self, connection: LimitedConnection) -> None:
        """
        A connection ended.
        """
        self.connections.discard(connection)
        if not self._accepting and not self.full:
            self._accepting = True
            self._sweeper.stop()
            for port in self._ports:
                port.startReading()

    def back_off(self, port: IListeningPort, seconds: float) -> None:
        """
        Stop C{port} accepting for C{seconds}: it has connections waiting
        that cannot be accepted (no descriptor is free), and the reactor
        would otherwise spin on them.
        """
        port.stopReading()
        self._clock.callLater(seconds, self._resume, port)

    def _resume(self, port: IListeningPort) -> None:
        if self._accepting and port in self._ports:
            port.startReading()

    def _make_room(self) -> None:
        """
        Close the oldest idle kept-alive connections if new ones wait.
        """
        if not self._waiting():
            self._room = 1
            return
        idle = sorted(
            (since, id(c), c) for c in self.connections if (since := c.idle_since()) is not None
        )
        for _, _, connection in idle[: self._room]:
            self._closed_idle.count()
            connection.close_idle()
        self._room = min(2 * self._room, MAX_ROOM)

    def _waiting(self) -> bool:
        """
        Whether a connection waits to be accepted on any of the ports.
        """
        sockets = [port.fileno() for port in self._ports]
        return bool(sockets) and bool(select.select(sockets, [], [], 0)[0])
