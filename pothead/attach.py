"""
The attach handshake, shared by both ends (see docs/protocol.md).

The worker opens a connection and sends one HTTP/1.1 upgrade request; the
hub answers ``101 Switching Protocols`` and from the next byte on the roles
are swapped: the worker is the HTTP server on that connection.

Both ends read exactly one message head (start line and headers) before
the switch; L{HeadReceiver} does that with hard limits and a timeout, then
hands the connection, and any bytes already read past the head, to the
protocol that takes over.
"""

from __future__ import annotations

from urllib.parse import quote

from twisted.internet.protocol import Protocol
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from pothead.sockets import tune_tcp

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

#: What a draining worker sends on an idle slot before it closes it: a
#: requeue signal that also closes the connection.  If the hub sent a
#: request at that moment, the notice answers it and the hub requeues it.
DETACH_NOTICE = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    + REQUEUE_HEADER
    + b": 1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
)

#: Limits on a handshake head: no real attach comes anywhere near them.
MAX_HEAD_LINE = 8 * 1024
MAX_HEAD_BYTES = 32 * 1024


class HeadReceiver(LineReceiver, TimeoutMixin):
    """
    Read one HTTP message head, then pass the connection on.

    Subclasses implement L{head_received}, and call L{switch_to} to hand
    the connection to the protocol that speaks after the handshake.

    :ivar timeout: seconds allowed for the whole head to arrive, from its
        first byte.
    :ivar quiet_timeout: seconds the connection may stay silent before
        the head starts, or L{None} to count C{timeout} from the connect.
    """

    MAX_LENGTH = MAX_HEAD_LINE
    timeout: float | None = 10.0
    quiet_timeout: float | None = None
    _heard = False

    def __init__(self) -> None:
        self._start_line: bytes | None = None
        self._headers = Headers()
        self._head_bytes = 0
        self._successor: Protocol | None = None

    def connectionMade(self) -> None:
        tune_tcp(self.transport)
        self.setTimeout(self.quiet_timeout or self.timeout)

    def dataReceived(self, data: bytes) -> None:
        if not self._heard:
            self._heard = True
            if self.quiet_timeout is not None and self._start_line is None:
                self.setTimeout(self.timeout)
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        self._head_bytes += len(line) + 2
        if self._head_bytes > MAX_HEAD_BYTES:
            self.head_failed("head too large")
            return
        if self._start_line is None:
            self._start_line = line
            return
        if line:
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip():
                self.head_failed("malformed header line")
                return
            self._headers.addRawHeader(name, value.strip())
            return
        self.setTimeout(None)
        self.setRawMode()
        self.head_received(self._start_line, self._headers)

    def lineLengthExceeded(self, line: bytes) -> None:
        self.head_failed("head line too long")

    def timeoutConnection(self) -> None:
        self.head_failed("timed out" if self._heard else "silent too long")

    def head_received(self, start_line: bytes, headers: Headers) -> None:
        """
        The whole head has arrived.

        :param start_line: the request or status line.
        :param headers: the headers, in order.
        """
        raise NotImplementedError()

    def head_failed(self, why: str) -> None:
        """
        The head was refused before it was complete; drop the connection.
        """
        self.setTimeout(None)
        self.transport.abortConnection()
        # Ignore what else was read with the offending bytes.
        self.lineReceived = self.rawDataReceived = lambda data: None

    def switch_to(self, successor: Protocol) -> None:
        """
        Hand the connection to C{successor}: it sees the same transport,
        every byte from now on, and the connection's end.
        """
        self._successor = successor
        successor.makeConnection(self.transport)

    def rawDataReceived(self, data: bytes) -> None:
        if self._successor is not None:
            self._successor.dataReceived(data)
        else:
            self.head_failed("data before the handshake finished")

    def connectionLost(self, reason: Failure = None) -> None:
        self.setTimeout(None)
        if self._successor is not None:
            self._successor.connectionLost(reason)


def attach_request(
    host: str, pool: str, token: str | None, worker: str
) -> bytes:
    """
    The bytes a worker sends to attach one slot.

    :param host: the hub's name, for the Host header.
    :param pool: which pool the slot joins.
    :param token: the hub's bearer token, if it requires one.
    :param worker: free text naming this slot, for the hub's logs.
    """
    lines = [
        b"GET " + ATTACH_PATH + quote(pool, safe="").encode("ascii") + b" HTTP/1.1",
        b"Host: " + host.encode("idna"),
        b"Connection: Upgrade",
        b"Upgrade: " + UPGRADE_TOKENS[0],
        b"ALPN: " + HTTP11_ALPN,
    ]
    if token:
        lines.append(b"Authorization: Bearer " + token.encode("utf-8"))
    lines.append(b"Pothead-Worker: " + worker.encode("utf-8", "replace"))
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
