"""
The attach handshake, shared by both ends (see docs/protocol.md).

The worker opens a connection and sends one HTTP/1.1 upgrade request; the
hub answers ``101 Switching Protocols`` and from the next byte on the roles
are swapped: the worker is the HTTP server on that connection.

Both ends read exactly one message head (start line and headers) before
the switch; L{HeadReceiver} does that with llhttp, a hard limit and a
timeout, then hands the connection, and any bytes already read past the
head, to the protocol that takes over.
"""

from __future__ import annotations

from typing import Sequence
from urllib.parse import quote

from httptools import HttpRequestParser, HttpResponseParser
from twisted.internet.protocol import Protocol
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from pothead.http.llhttp import feed
from pothead.http.message import BadMessage
from pothead.http.sockets import tune_tcp

#: Where workers attach; the pool's name follows.
ATTACH_PATH = b"/pothead/v1/attach/"

#: The pool a worker joins when it names none.
DEFAULT_POOL = "default"

#: Upgrade tokens the hub accepts: draft-kazuho-ptth's, then the older
#: Reverse HTTP one (draft-lentczner-rhttp).  Workers offer the first.
UPGRADE_TOKENS = (b"ptth", b"PTTH/1.0")

#: The ALPN identifier of the one protocol spoken after the switch.
HTTP11_ALPN = b"http%2F1.1"

#: The header of the requeue signal: a 503 with it means "not processed".
REQUEUE_HEADER = b"Pothead-Requeue"

#: On an attach request: to how many hubs the slot is offered at once.  A
#: hub logs the attaches and detaches of such a slot, which may come with
#: every job another hub gives it, at debug level only.
OFFERS_HEADER = b"Pothead-Offers"

#: On an attach request and the hub's C{101}: this end speaks bids
#: (L{pothead.bidding}).  A worker offers them with L{OFFERS_HEADER}.
BIDS_HEADER = b"Pothead-Bids"

#: What a draining worker sends on an idle slot before it closes it: a
#: requeue signal that also closes the connection.  If the hub sent a
#: request at that moment, the notice answers it and the hub requeues it.
DETACH_NOTICE = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    + REQUEUE_HEADER
    + b": 1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
)

#: On a requeue signal: the slot was withdrawn because another hub's job
#: took it (late binding).  A job it answers goes back to the head of the
#: line without counting as handed back by a worker: losing that race
#: says nothing about the job.
OFFER_HEADER = b"Pothead-Offer"

#: The value of L{OFFER_HEADER} on the detach notice of a draining worker:
#: a job it answers goes back to the head of the line, counted as
#: requeued by a drain and not as handed back (a worker stopping says
#: nothing about the job).  A hub that does not know it takes the notice
#: as a plain requeue signal.
DRAINING = b"draining"

#: The detach notice of a draining worker.
DRAIN_NOTICE = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    + REQUEUE_HEADER
    + b": 1\r\n" + OFFER_HEADER + b": " + DRAINING
    + b"\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
)

#: The detach notice of a slot withdrawn for another hub's job.
WITHDRAW_NOTICE = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    + REQUEUE_HEADER
    + b": 1\r\n" + OFFER_HEADER + b": withdrawn\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
)

#: The limit on a handshake head: no real attach comes anywhere near it.
MAX_HEAD_BYTES = 32 * 1024


class HeadReceiver(Protocol, TimeoutMixin):
    """
    Read one HTTP message head with llhttp (L{pothead.http.llhttp}), then pass
    the connection on.

    Subclasses name the parser (requests at the hub, responses at the
    worker), implement L{head_received}, and call L{switch_to} to hand the
    connection to the protocol that speaks after the handshake.  llhttp
    stops right after the head of a message that switches protocols, so
    the bytes after it, read with it, go to that protocol.

    :ivar timeout: seconds allowed for the whole head to arrive, from its
        first byte.
    :ivar quiet_timeout: seconds the connection may stay silent before
        the head starts, or L{None} to count C{timeout} from the connect.
    """

    parser_class: type[HttpRequestParser] | type[HttpResponseParser]
    timeout: float | None = 10.0
    quiet_timeout: float | None = None
    _heard = False

    def __init__(self) -> None:
        self._parser: HttpRequestParser | HttpResponseParser | None = self.parser_class(self)
        self._target = b""
        self._headers = Headers()
        self._head_bytes = 0
        self._complete = False
        self._successor: Protocol | None = None

    def connectionMade(self) -> None:
        tune_tcp(self.transport)
        self.setTimeout(self.quiet_timeout or self.timeout)

    def dataReceived(self, data: bytes) -> None:
        if self._successor is not None:
            self._successor.dataReceived(data)
            return
        if self._parser is None:
            # Refused, or answered and closing: nothing more is read.
            return
        if not self._heard:
            self._heard = True
            if self.quiet_timeout is not None:
                self.setTimeout(self.timeout)
        try:
            rest = feed(self._parser, data, BadMessage)
        except BadMessage as error:
            self._parser = None
            self.head_malformed(str(error))
            return
        if not self._complete:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self.head_failed("head too large")
            return
        parser, self._parser = self._parser, None
        self.setTimeout(None)
        self.head_received(self._start_line(parser), self._headers)
        if self._successor is not None and 0 <= rest < len(data):
            self._successor.dataReceived(data[rest:])

    # llhttp's callbacks.

    def on_url(self, piece: bytes) -> None:
        self._target += piece

    def on_status(self, piece: bytes) -> None:
        self._target += piece

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._complete:
            self._headers.addRawHeader(name, value.rstrip(b" \t"))

    def on_headers_complete(self) -> None:
        self._complete = True

    def _start_line(self, parser: HttpRequestParser | HttpResponseParser) -> bytes:
        version = b"HTTP/" + parser.get_http_version().encode("ascii")
        if isinstance(parser, HttpRequestParser):
            return b"%s %s %s" % (parser.get_method(), self._target, version)
        return b"%s %03d %s" % (version, parser.get_status_code(), self._target)

    def timeoutConnection(self) -> None:
        self.head_failed("timed out" if self._heard else "silent too long")

    def head_received(self, start_line: bytes, headers: Headers) -> None:
        """
        The whole head has arrived.

        :param start_line: the request or status line, as llhttp read it.
        :param headers: the headers, in order.
        """
        raise NotImplementedError()

    def head_malformed(self, why: str) -> None:
        """
        llhttp refused the head: by default, as L{head_failed}.
        """
        self.head_failed(why)

    def head_failed(self, why: str) -> None:
        """
        The head was refused before it was complete; drop the connection,
        and ignore what else was read with the offending bytes.
        """
        self.setTimeout(None)
        self._parser = None
        self.transport.abortConnection()

    def switch_to(self, successor: Protocol) -> None:
        """
        Hand the connection to C{successor}: it sees the same transport,
        every byte from now on, and the connection's end.
        """
        self._successor = successor
        successor.makeConnection(self.transport)

    def connectionLost(self, reason: Failure = None) -> None:
        self.setTimeout(None)
        self._parser = None
        if self._successor is not None:
            self._successor.connectionLost(reason)


def attach_path(pool: str | Sequence[str]) -> bytes:
    """The pools part of an attach path: names percent-encoded, comma-separated."""
    pools = [pool] if isinstance(pool, str) else pool
    return b",".join(quote(name, safe="").encode("ascii") for name in pools)


def attach_request(
    host: str, pool: str | Sequence[str], token: str | None, worker: str, offered_to: int = 1
) -> bytes:
    """
    The bytes a worker sends to attach one slot.

    :param host: the hub's name, for the Host header.
    :param pool: which pool the slot joins; or several, named in its path
        separated by commas, and the slot takes the oldest job across them.
    :param token: the hub's bearer token, if it requires one.
    :param worker: free text naming this slot, for the hub's logs.
    :param offered_to: how many hubs the slot is offered to at once (late
        binding); above 1 it is said in L{OFFERS_HEADER}, and the hub
        expects the slot to be withdrawn and offered again with every job
        another hub gives it.
    """
    lines = [
        b"GET " + ATTACH_PATH + attach_path(pool) + b" HTTP/1.1",
        b"Host: " + host.encode("idna"),
        b"Connection: Upgrade",
        b"Upgrade: " + UPGRADE_TOKENS[0],
        b"ALPN: " + HTTP11_ALPN,
    ]
    if token:
        lines.append(b"Authorization: Bearer " + token.encode("utf-8"))
    lines.append(b"Pothead-Worker: " + worker.encode("utf-8", "replace"))
    if offered_to > 1:
        # Bids (pothead.bidding) are offered with it: a hub that speaks
        # them says so in its 101.
        lines.append(OFFERS_HEADER + b": %d" % (offered_to,))
        lines.append(BIDS_HEADER + b": 1")
    return b"\r\n".join(lines) + b"\r\n\r\n"


def header_tokens(headers: Headers, name: bytes) -> list[bytes]:
    """
    The comma-separated tokens of every C{name} header, stripped.
    """
    return [
        token.strip()
        for value in headers.getRawHeaders(name, ())
        for token in value.split(b",")
        if token.strip()
    ]
