"""
A consumer's request head, read strictly.

Every byte of it is passed on to a worker, whose HTTP server might read an
ambiguous request differently from the hub: a request the two frame
differently smuggles a second request past the queue into another
consumer's slot (RFC 9112 section 11.2).  So the hub refuses what RFC 9112
lets a server refuse, each with the status code it deserves, rather than
guess: a malformed request line or header line, a header name that is not
a token, a value with control bytes, conflicting or invalid
``Content-Length``, ``Transfer-Encoding`` beside ``Content-Length`` or in
an HTTP/1.0 request, and several ``Host`` headers.
"""

from __future__ import annotations

import re

from pothead.http1 import (
    TARGET,
    TOKEN,
    BadMessage,
    content_length,
    field_tokens,
    field_values,
    parse_fields,
)

_VERSION = re.compile(rb"\AHTTP/([0-9])\.([0-9])\Z")


class BadRequest(BadMessage):
    """
    A request the hub refuses.

    :ivar status: the status code it is answered with.
    """

    def __init__(self, why: str, status: int = 400) -> None:
        super().__init__(why)
        self.status = status


class RequestHead:
    """
    A consumer's request line and headers, and what they say about the
    body and the connection.

    :ivar method: the method, as sent.
    :ivar target: the request target, as sent.
    :ivar version: ``b"HTTP/1.1"`` or ``b"HTTP/1.0"``: the version its
        response is written in.
    :ivar fields: every header as sent, in order: C{(name, value)} pairs.
    :ivar host: the ``Host`` header's value, if it has one.
    :ivar length: the body's ``Content-Length``, or L{None}.
    :ivar chunked: whether the body is chunked.
    :ivar keep_alive: whether the consumer asked to keep the connection.
    :ivar expects_continue: whether the consumer waits for
        ``100 Continue`` before it sends its body.
    """

    __slots__ = (
        "method", "target", "version", "fields", "host", "length", "chunked", "keep_alive",
        "expects_continue",
    )

    def __init__(
        self, method: bytes, target: bytes, version: bytes, fields: list[tuple[bytes, bytes]]
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.fields = fields
        self.host: bytes | None = None
        self.length: int | None = None
        self.chunked = False
        self.keep_alive = False
        self.expects_continue = False

    @property
    def has_body(self) -> bool:
        """Whether the request frames a body, even an empty one."""
        return self.chunked or self.length is not None

    def values(self, name: bytes) -> list[bytes]:
        """
        The values of every header called C{name} (lower case), in order.
        """
        return field_values(self.fields, name)


def parse_request_head(head: bytes) -> RequestHead:
    """
    Parse a request head, up to (not including) the empty line that ends
    it.

    :raise BadRequest: if the hub must refuse it.
    """
    lines = head.split(b"\n")
    request_line = lines[0][:-1] if lines[0].endswith(b"\r") else lines[0]
    parts = request_line.split(b" ")
    if len(parts) != 3:
        raise BadRequest(f"malformed request line {request_line[:80]!r}")
    method, target, version = parts
    if not TOKEN.match(method):
        raise BadRequest(f"invalid method {method[:40]!r}")
    if not TARGET.match(target):
        raise BadRequest(f"invalid request target {target[:80]!r}")
    numbers = _VERSION.match(version)
    if numbers is None:
        raise BadRequest(f"invalid HTTP version {version[:20]!r}")
    if numbers.group(1) != b"1":
        raise BadRequest(f"HTTP version {version.decode()} not supported", 505)
    http11 = numbers.group(2) != b"0"
    request = RequestHead(
        method, target, b"HTTP/1.1" if http11 else b"HTTP/1.0",
        parse_fields(lines[1:], BadRequest, strict=True),
    )
    hosts = request.values(b"host")
    if len(hosts) > 1:
        # RFC 9112 section 3.2: a worker must not have to guess which
        # Host counts.
        raise BadRequest("several Host headers")
    request.host = hosts[0] if hosts else None
    _frame(request, http11)
    connection = field_tokens(request.fields, b"connection")
    if http11:
        request.keep_alive = b"close" not in connection
        request.expects_continue = any(
            value.lower() == b"100-continue" for value in request.values(b"expect")
        )
    else:
        request.keep_alive = b"keep-alive" in connection and b"close" not in connection
    return request


def _frame(request: RequestHead, http11: bool) -> None:
    """
    Decide how the request's body is delimited (RFC 9112 section 6.3).
    """
    codings = request.values(b"transfer-encoding")
    lengths = request.values(b"content-length")
    if codings:
        if not http11:
            raise BadRequest("Transfer-Encoding in an HTTP/1.0 request")
        if lengths:
            raise BadRequest("both Transfer-Encoding and Content-Length")
        tokens = [token.strip().lower() for value in codings for token in value.split(b",")]
        if tokens[-1] != b"chunked":
            raise BadRequest("Transfer-Encoding does not end in chunked")
        if len(tokens) > 1:
            raise BadRequest(f"transfer coding {b', '.join(codings)[:80]!r} not supported", 501)
        request.chunked = True
    elif lengths:
        request.length = content_length(lengths, BadRequest)
