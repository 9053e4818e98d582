"""
Bids: how a slot offered to several hubs takes the oldest job among them
(late binding; docs/protocol.md, section 6b).  The wire format, shared by
both ends.

A worker that offers a slot to several hubs says C{Pothead-Bids: 1} in its
attach request (L{pothead.attach.BIDS_HEADER}); a hub that knows bids says
it back in its C{101}.  On such
a connection the hub does not send a job whenever it has one: it first
I{bids}, with a small request that says how long the job at the head of its
line has waited (or that it has none), and the worker, having heard from
every hub the slot is offered to, answers each bid:

  - C{take}: send your head job now (the oldest bid wins);
  - C{hold}: send nothing until the worker renews the offer;
  - C{open}: nobody had a job; send your next one as soon as it comes.

Outside bids the worker sends two notices of its own on an idle
connection: the I{hold} notice, which withdraws an open offer and keeps the
connection (a requeue signal, so a job the hub sent at that moment is
taken back by it), and the I{renew} notice, on which a held hub bids again.
"""

from __future__ import annotations

from pothead.attach import OFFER_HEADER, REQUEUE_HEADER

#: In a bid: how long the hub's head job has waited, in milliseconds, or
#: C{none}.
BID_HEADER = b"Pothead-Bid"

#: The worker's answers to a bid, as the value of L{OFFER_HEADER}.
TAKE = b"take"
HOLD = b"hold"
OPEN = b"open"
ANSWERS = frozenset({TAKE, HOLD, OPEN})

#: On a requeue signal or a renew notice: what the worker does with the
#: offer.  A hold notice keeps the connection open.
HELD = b"held"
RENEWED = b"renewed"

HOLD_NOTICE = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    + REQUEUE_HEADER + b": 1\r\n"
    + OFFER_HEADER + b": " + HELD + b"\r\nContent-Length: 0\r\n\r\n"
)

RENEW_NOTICE = (
    b"HTTP/1.1 200 OK\r\n" + OFFER_HEADER + b": " + RENEWED + b"\r\nContent-Length: 0\r\n\r\n"
)

#: The request line of a bid; its target is the server as a whole.
BID_METHOD = b"OPTIONS"
BID_TARGET = b"*"


def bid_request(waited: float | None) -> bytes:
    """
    The bytes of a hub's bid.

    :param waited: seconds the hub's head job has waited, or L{None} when
        its line is empty.
    """
    value = b"none" if waited is None else b"%.3f" % (max(0.0, waited) * 1000,)
    return (
        BID_METHOD + b" " + BID_TARGET + b" HTTP/1.1\r\nHost: pothead\r\n"
        + BID_HEADER + b": " + value + b"\r\n\r\n"
    )


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
