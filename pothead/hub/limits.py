"""
The hub's limits and timeouts, in one place (docs/operations.md explains
each, with the status code it produces).

The defaults suit expensive work: requests that take seconds to minutes,
bodies of media size, and a queue that may be long but must not grow
without bound.
"""

from __future__ import annotations

from dataclasses import dataclass

from pothead.http.limits import MINUTE, SECOND, MessageLimits

#: Consumer connections the default connection limit allows beyond a full
#: queue and a busy slot each: idle kept-alive ones, ones being refused.
IDLE_ROOM = 256


@dataclass(frozen=True)
class Limits(MessageLimits):
    """
    The hub's limits: those on consumer messages (L{MessageLimits}), and
    these.

    :ivar max_queue: jobs a pool may hold waiting; more get 503.
    :ivar max_connections: consumer connections open at once; at the
        limit new ones wait in the listen backlog.  L{None}: enough for a
        full queue, a request on every slot and some idle kept-alive
        connections (L{Limits.connections}).
    :ivar max_slots: worker slots attached at once; further attaches get
        503.
    :ivar queue_timeout: seconds a job may wait for a slot; then 503.
    :ivar request_timeout: seconds from arrival until the worker's response
        head; then 504.
    :ivar attach_timeout: seconds a worker's attach request has to arrive
        whole, from its first byte.
    :ivar quiet_timeout: seconds a worker-port connection may stay silent
        before it starts to attach (a worker gated by admission waits so).
    :ivar retry_after: the ``Retry-After`` seconds sent with every 503.
    :ivar retries: how often a job whose worker vanished before answering
        is handed to another worker (idempotent methods only).
    :ivar stop_timeout: seconds queued and in-flight jobs get to finish
        when the hub stops.
    :ivar stall_timeout: seconds a response being relayed may go without
        a byte from its worker (a worker that stopped sending, or one
        paused that long because its consumer stopped reading); then the
        consumer and the worker's slot are both cut off, so that neither
        holds the other for good.
    """

    max_queue: int = 1000
    max_connections: int | None = None
    max_slots: int = 1024
    queue_timeout: float = 1 * MINUTE
    request_timeout: float = 10 * MINUTE
    attach_timeout: float = 10 * SECOND
    quiet_timeout: float = 5 * MINUTE
    retry_after: int = 5
    retries: int = 1
    stop_timeout: float = 30 * SECOND
    stall_timeout: float = 5 * MINUTE

    @property
    def connections(self) -> int:
        """
        The consumer connections the hub holds: L{max_connections}, or by
        default a full queue, one being answered by every slot, and room
        for idle kept-alive ones.
        """
        if self.max_connections is not None:
            return self.max_connections
        return self.max_queue + self.max_slots + IDLE_ROOM
