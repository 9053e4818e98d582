"""
Header rewriting between the consumer and the worker.

A proxy must not forward hop-by-hop headers (RFC 9110 section 7.6.1): they
describe one connection, and the hub runs two.  Everything else passes
through untouched, in order, repeated headers included.
"""

from __future__ import annotations

from pothead.http.message import field_tokens

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


#: Headers of the hub-worker link itself, which a consumer must not be able
#: to forge: a bid (L{pothead.bidding}) is told from a job by its
#: C{Pothead-Bid} header, and a job says what waits behind it with
#: C{Pothead-Next}.
LINK_HEADERS = frozenset({b"pothead-bid", b"pothead-next"})

#: What is never forwarded, whatever the request's ``Connection`` says.
_NOT_FORWARDED = HOP_BY_HOP | LINK_HEADERS


def forwarded_headers(
    fields: list[tuple[bytes, bytes]],
    client_ip: str,
    proto: bytes,
    host: bytes | None,
    own_host: bytes | None,
) -> dict[bytes, list[bytes]]:
    """
    The headers a worker is sent for a consumer's request, in one pass:
    every end-to-end header in order (repeated ones together, under the
    name as first spelled) but the link's own (L{LINK_HEADERS}), a
    ``Host`` if the consumer sent none, and the
    de-facto ``X-Forwarded-*`` headers.

    ``X-Forwarded-For`` is appended to, so that a chain of proxies stays
    visible; ``-Proto`` and ``-Host`` describe the hop the hub received,
    and replace whatever the consumer sent.  A header the hub sets keeps
    the consumer's header's place, or goes last.

    :param fields: the consumer's request headers, as sent.
    :param client_ip: the consumer's address as the hub saw it.
    :param proto: ``b"http"`` or ``b"https"``.
    :param host: the consumer's ``Host`` header, if it sent one.
    :param own_host: the hub's own address, the ``Host`` of a request
        without one (needed only then).
    """
    listed = field_tokens(fields, b"connection")
    dropped = _NOT_FORWARDED | listed if listed else _NOT_FORWARDED
    kept: dict[bytes, list[bytes]] = {}
    spelled: dict[bytes, bytes] = {}
    for name, value in fields:
        lower = name.lower()
        if lower not in dropped:
            kept.setdefault(spelled.setdefault(lower, name), []).append(value)
    if host is None and own_host is not None:
        kept[b"Host"] = [own_host]
    ip = client_ip.encode("ascii")
    forwarded_for = spelled.get(b"x-forwarded-for", b"X-Forwarded-For")
    earlier = kept.get(forwarded_for)
    kept[forwarded_for] = [b", ".join(earlier) + b", " + ip if earlier else ip]
    kept[spelled.get(b"x-forwarded-proto", b"X-Forwarded-Proto")] = [proto]
    forwarded_host = spelled.get(b"x-forwarded-host", b"X-Forwarded-Host")
    if host is not None:
        kept[forwarded_host] = [host]
    else:
        kept.pop(forwarded_host, None)
    return kept
