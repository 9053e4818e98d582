"""
The limits a server channel enforces on the messages it reads: sizes and
timeouts, as both programs set them (the hub's for consumers, in
L{pothead.hub.limits}; the worker's for its hub, in
L{pothead.worker.slot_server}).
"""

from __future__ import annotations

from dataclasses import dataclass

SECOND = 1.0
MINUTE = 60 * SECOND
KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB


@dataclass(frozen=True)
class MessageLimits:
    """
    :ivar max_body_bytes: largest request body; larger gets 413.
    :ivar max_header_bytes: largest request line plus headers; 414/431.
    :ivar header_timeout: seconds a client has to send a request head;
        then 408.
    :ivar body_timeout: seconds a client has to send a request body,
        from the end of its head; then 408.
    :ivar idle_timeout: seconds a connection may stay idle between
        requests; then it is closed.

    A header, body or idle timeout of L{None} is no timeout at all.
    """

    max_body_bytes: int = 1 * GIB
    max_header_bytes: int = 64 * KIB
    header_timeout: float | None = 30 * SECOND
    body_timeout: float | None = 5 * MINUTE
    idle_timeout: float | None = 1 * MINUTE
