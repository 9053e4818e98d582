"""
Bids: how a slot offered to several hubs takes the oldest job among them
(late binding; docs/protocol.md, section 6b).  The wire format, shared by
both ends.

A worker that offers a slot to several hubs says C{Pothead-Bids: 1} in its
attach request (L{pothead.attach.BIDS_HEADER}); a hub that knows bids says
it back in its C{101}.  On such a connection the hub does not send a job
whenever it has one: it I{bids}, with a small request that says how long
the job at the head of its line has waited (or that it has none), and the
worker answers:

  - C{take}: send your head job now;
  - C{hold}: not now; bid again when you have a job;
  - C{open}: nobody has a job; send your next one as soon as it comes.

A bid for a job made while the slot is busy stands, unanswered, until the
slot is free; the oldest job then wins.  The hub whose job just ended says
how long its next job had waited in the job's own request
(C{Pothead-Next}), and hears its verdict, one of the three answers,
right after the response: when it is the one, its next job goes out as
soon as a single hub's would.

The worker's I{hold} notice withdraws an open offer and keeps the
connection; it is a requeue signal, so a job the hub sent at that moment
is taken back by the hub, which then closes the connection.
"""

from __future__ import annotations

from pothead.attach import OFFER_HEADER, REQUEUE_HEADER
from pothead.http.request import RequestHead

#: In a bid: how long the hub's head job has waited, in milliseconds, or
#: C{none}.
BID_HEADER = b"Pothead-Bid"

#: Last in a job's request: how long the job behind it in the hub's line
#: had waited, in milliseconds, or C{none}.  The worker takes it off.
NEXT_HEADER = b"Pothead-Next"

#: The worker's answers to a bid, as the value of L{OFFER_HEADER}.
TAKE = b"take"
HOLD = b"hold"
OPEN = b"open"

#: On a requeue signal: the worker holds the offer, and keeps the
#: connection open.
HELD = b"held"

HOLD_NOTICE = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    + REQUEUE_HEADER + b": 1\r\n"
    + OFFER_HEADER + b": " + HELD + b"\r\nContent-Length: 0\r\n\r\n"
)

#: The request line of a bid; its target is the server as a whole.
BID_METHOD = b"OPTIONS"
BID_TARGET = b"*"


def _milliseconds(waited: float | None) -> bytes:
    return b"none" if waited is None else b"%.3f" % (max(0.0, waited) * 1000,)


def bid_request(waited: float | None) -> bytes:
    """
    The bytes of a hub's bid.

    :param waited: seconds the hub's head job has waited, or L{None} when
        its line is empty.
    """
    return (
        BID_METHOD + b" " + BID_TARGET + b" HTTP/1.1\r\nHost: pothead\r\n"
        + BID_HEADER + b": " + _milliseconds(waited) + b"\r\n\r\n"
    )


def with_next(head: bytes, waited: float | None) -> bytes:
    """
    A job's request head with L{NEXT_HEADER} added last.

    :param waited: seconds the next job in line had waited, or L{None}.
    """
    return head[:-2] + NEXT_HEADER + b": " + _milliseconds(waited) + b"\r\n\r\n"


def next_waited(head: RequestHead) -> float | None:
    """
    Take L{NEXT_HEADER} off a job's request head (the app does not see it):
    how long the hub's next job had waited, in seconds, or L{None} for
    none, or for a value that is not a number.
    """
    fields = head.fields
    if not fields or fields[-1][0].lower() != b"pothead-next":
        return None
    value = fields.pop()[1].strip()
    try:
        waited = float(value) / 1000
    except ValueError:
        return None
    return waited if 0.0 <= waited < 1e9 else None


def verdict_notice(answer: bytes) -> bytes:
    """
    The worker's answer to the hub whose job just ended, sent unasked
    right after the response.
    """
    return b"HTTP/1.1 200 OK\r\n" + OFFER_HEADER + b": " + answer + b"\r\nContent-Length: 0\r\n\r\n"


def bid_answer(answer: bytes) -> tuple[int, bytes, list[tuple[bytes, bytes]], bytes]:
    """
    The worker's response to a bid, as L{ServerRequest.answer}'s arguments.
    """
    return 200, b"OK", [(OFFER_HEADER, answer)], b""


class BadBid(ValueError):
    """
    A message where a bid was due that is not one.
    """


def parse_bid(method: bytes, target: bytes, values: list[bytes]) -> float | None:
    """
    Read a bid: how long the hub's head job has waited, in seconds, or
    L{None} when it has none.

    :param values: the request's L{BID_HEADER} values.
    :raise BadBid: if it is not a bid.
    """
    if method != BID_METHOD or target != BID_TARGET or len(values) != 1:
        raise BadBid(f"expected a bid, got {method.decode('latin-1')} {target[:60]!r}")
    value = values[0].strip()
    if value == b"none":
        return None
    try:
        waited = float(value)
    except ValueError:
        raise BadBid(f"bad bid {value[:40]!r}") from None
    if not 0.0 <= waited < 1e12:
        raise BadBid(f"bad bid {value[:40]!r}")
    return waited / 1000
