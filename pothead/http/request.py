"""
The hub's policy on a request head that llhttp has parsed.

Every byte of a request's syntax is checked by llhttp (L{pothead.http.llhttp}):
a request line, header line or body that is not strict HTTP/1.1 never gets
this far.  What llhttp accepts and a front door must still refuse is
decided here, each with the status code it deserves: several ``Host``
headers (a worker must not have to guess which counts) or none in
HTTP/1.1, a transfer coding in an HTTP/1.0 request or one that does not
end in ``chunked``, another coding before ``chunked`` (501), any HTTP
version but 1.0 and 1.1 (505), ``CONNECT`` (the hub is no forward proxy),
and an absolute-form target, whose authority becomes the ``Host`` the
worker sees (RFC 9112 section 3.2.2) so that the two cannot disagree.
"""

from __future__ import annotations

from httptools import HttpParserInvalidURLError, parse_url

from pothead.http.message import BadMessage, field_values


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
    :ivar target: the request target in origin form (or ``*``).
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


#: The versions llhttp reports that the hub serves.
_VERSIONS = {"1.1": b"HTTP/1.1", "1.0": b"HTTP/1.0"}


def request_head(
    method: bytes, target: bytes, version: str, keep_alive: bool,
    fields: list[tuple[bytes, bytes]], require_host: bool = True,
) -> RequestHead:
    """
    The head of a request llhttp has parsed, once the hub's policy allows
    it.

    :param version: as llhttp reports it, C{"1.1"}.
    :param keep_alive: llhttp's reading of the version and ``Connection``.
    :param fields: every header, in order, values without surrounding
        whitespace.
    :param require_host: whether an HTTP/1.1 request without ``Host`` is
        refused, as RFC 9112 says a server must (the front door); a
        worker's slot, whose only client is the hub, serves it.
    :raise BadRequest: if the hub must refuse it.
    """
    if version not in _VERSIONS:
        if version == "0.9":
            raise BadRequest("request line without an HTTP version")
        raise BadRequest(f"HTTP version {version} not supported", 505)
    if method == b"CONNECT":
        raise BadRequest("CONNECT: the hub is not a forward proxy", 501)
    request = RequestHead(method, target, _VERSIONS[version], fields)
    request.keep_alive = keep_alive
    hosts: list[bytes] = []
    codings: list[bytes] = []
    for name, value in fields:
        lower = name.lower()
        if lower == b"host":
            hosts.append(value)
        elif lower == b"content-length":
            # llhttp has refused anything but one decimal number.
            request.length = int(value)
        elif lower == b"transfer-encoding":
            codings.extend(token.strip().lower() for token in value.split(b","))
        elif lower == b"expect":
            request.expects_continue = value.lower() == b"100-continue"
    if len(hosts) > 1:
        # RFC 9112 section 3.2: a worker must not have to guess which
        # Host counts.
        raise BadRequest("several Host headers")
    request.host = hosts[0] if hosts else None
    if require_host and not hosts and version == "1.1" and target[:1] in (b"/", b"*"):
        # RFC 9112 section 3.2: a server must refuse it.  (An absolute-form
        # target names its host itself.)
        raise BadRequest("HTTP/1.1 request without Host")
    if codings:
        # llhttp has refused Transfer-Encoding beside Content-Length; a last
        # coding other than chunked it refuses only after this runs.
        if version == "1.0":
            raise BadRequest("Transfer-Encoding in an HTTP/1.0 request")
        if codings[-1] != b"chunked":
            raise BadRequest("Transfer-Encoding does not end in chunked")
        if len(codings) > 1:
            raise BadRequest(f"transfer codings {b', '.join(codings)[:80]!r} not supported", 501)
        request.chunked = True
    if version == "1.0":
        request.expects_continue = False
    if target[:1] != b"/" and target != b"*":
        _absolute_form(request)
    return request


def _absolute_form(request: RequestHead) -> None:
    """
    Turn an absolute-form target (``GET http://h/p HTTP/1.1``) into the
    origin form a worker expects, its authority the request's ``Host``
    (RFC 9112 section 3.2.2: a server ignores the ``Host`` header then).
    """
    try:
        url = parse_url(request.target)
    except HttpParserInvalidURLError:
        raise BadRequest(f"invalid request target {request.target[:80]!r}") from None
    if url.schema is None or url.schema.lower() not in (b"http", b"https") or not url.host:
        raise BadRequest(f"request target {request.target[:80]!r} is not an http URL")
    if url.userinfo is not None:
        raise BadRequest("user information in the request target")
    # An IPv6 literal keeps its brackets in a Host header.
    bracketed = b"[" + url.host + b"]" if b":" in url.host else url.host
    host = bracketed if url.port is None else b"%s:%d" % (bracketed, url.port)
    request.target = (url.path or b"/") + (b"?" + url.query if url.query is not None else b"")
    request.host = host
    request.fields = [(b"Host", host)] + [
        (name, value) for name, value in request.fields if name.lower() != b"host"
    ]
