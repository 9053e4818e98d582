"""
Header rewriting between the consumer and the worker.

A proxy must not forward hop-by-hop headers (RFC 9110 section 7.6.1): they
describe one connection, and the hub runs two.  Everything else passes
through untouched, in order, repeated headers included.
"""

from __future__ import annotations

from twisted.web.http_headers import Headers

#: Headers that belong to one connection only (RFC 9110 section 7.6.1),
#: plus the framing headers the hub recomputes for the other connection.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"expect",
    }
)


def _connection_tokens(headers: Headers) -> set[bytes]:
    """
    The header names a ``Connection`` header declares hop-by-hop.
    """
    tokens = set()
    for value in headers.getRawHeaders(b"connection", ()):
        for token in value.split(b","):
            token = token.strip().lower()
            if token:
                tokens.add(token)
    return tokens


def end_to_end(headers: Headers) -> Headers:
    """
    Copy C{headers} without the hop-by-hop ones.

    :param headers: headers as received on one connection.
    :return: a new L{Headers} fit to send on the other connection.
    """
    dropped = HOP_BY_HOP | _connection_tokens(headers)
    copy = Headers()
    for name, values in headers.getAllRawHeaders():
        if name.lower() not in dropped:
            copy.setRawHeaders(name, list(values))
    return copy


def add_forwarded(
    headers: Headers, client_ip: str, proto: bytes, host: bytes | None
) -> None:
    """
    Add the de-facto C{X-Forwarded-*} headers for the worker.

    ``X-Forwarded-For`` is appended to, so that a chain of proxies stays
    visible; ``-Proto`` and ``-Host`` describe the hop the hub received,
    and replace whatever the consumer sent.

    :param headers: the request headers being sent to the worker.
    :param client_ip: the consumer's address as the hub saw it.
    :param proto: ``b"http"`` or ``b"https"``.
    :param host: the consumer's ``Host`` header, if it sent one.
    """
    forwarded_for = headers.getRawHeaders(b"x-forwarded-for")
    ip = client_ip.encode("ascii")
    if forwarded_for:
        ip = b", ".join(forwarded_for) + b", " + ip
    headers.setRawHeaders(b"X-Forwarded-For", [ip])
    headers.setRawHeaders(b"X-Forwarded-Proto", [proto])
    if host is not None:
        headers.setRawHeaders(b"X-Forwarded-Host", [host])
    else:
        headers.removeHeader(b"x-forwarded-host")
