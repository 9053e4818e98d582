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


def forwarded_headers(
    headers: Headers,
    client_ip: str,
    proto: bytes,
    host: bytes | None,
    own_host: bytes | None,
) -> dict[bytes, list[bytes]]:
    """
    The headers a worker is sent for a consumer's request, in one pass:
    every end-to-end header in order (names as twisted.web canonicalised
    them), a ``Host`` if the consumer sent none, and the de-facto
    ``X-Forwarded-*`` headers.

    ``X-Forwarded-For`` is appended to, so that a chain of proxies stays
    visible; ``-Proto`` and ``-Host`` describe the hop the hub received,
    and replace whatever the consumer sent.  A header the hub sets keeps
    the consumer's header's place, or goes last.

    :param headers: the consumer's request headers.
    :param client_ip: the consumer's address as the hub saw it.
    :param proto: ``b"http"`` or ``b"https"``.
    :param host: the consumer's ``Host`` header, if it sent one.
    :param own_host: the hub's own address, the ``Host`` of a request
        without one (needed only then).
    """
    dropped = HOP_BY_HOP | _connection_tokens(headers)
    kept = {
        name: values
        for name, values in headers.getAllRawHeaders()
        if name.lower() not in dropped
    }
    if host is None and own_host is not None:
        kept[b"Host"] = [own_host]
    ip = client_ip.encode("ascii")
    forwarded_for = kept.get(b"X-Forwarded-For")
    kept[b"X-Forwarded-For"] = [b", ".join(forwarded_for) + b", " + ip if forwarded_for else ip]
    kept[b"X-Forwarded-Proto"] = [proto]
    if host is not None:
        kept[b"X-Forwarded-Host"] = [host]
    else:
        kept.pop(b"X-Forwarded-Host", None)
    return kept
