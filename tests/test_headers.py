"""
Header rewriting between consumer and worker.
"""

import pytest

from pothead.http.headers import forwarded_headers

pytestmark = pytest.mark.unit


def consumer_headers(*pairs: tuple[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    return list(pairs)


def test_hop_by_hop_and_connection_listed_headers_dropped():
    """
    Hop-by-hop headers, and any header the Connection header names, are not
    forwarded; everything else is, repeated values in order.
    """
    headers = consumer_headers(
        (b"Connection", b"keep-alive, X-Private"),
        (b"Keep-Alive", b"timeout=5"),
        (b"X-Private", b"secret"),
        (b"TE", b"trailers"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Upgrade", b"h2c"),
        (b"Proxy-Authorization", b"Basic x"),
        (b"Content-Length", b"3"),
        (b"Cookie", b"a=1"),
        (b"Cookie", b"b=2"),
        (b"Host", b"example.com"),
    )
    kept = forwarded_headers(headers, "127.0.0.2", b"http", b"example.com", None)
    assert list(kept.items()) == [
        (b"Cookie", [b"a=1", b"b=2"]),
        (b"Host", [b"example.com"]),
        (b"X-Forwarded-For", [b"127.0.0.2"]),
        (b"X-Forwarded-Proto", [b"http"]),
        (b"X-Forwarded-Host", [b"example.com"]),
    ]


def test_forwarded_headers_replace_in_place_and_append():
    """
    X-Forwarded-For gets the consumer's address appended; -Proto and -Host
    describe the hop the hub received, in the place the consumer's stood.
    """
    headers = consumer_headers(
        (b"X-Forwarded-Host", b"evil"),
        (b"X-Forwarded-For", b"10.0.0.1"),
        (b"X-Forwarded-For", b"10.0.0.3"),
        (b"Accept", b"*/*"),
    )
    kept = forwarded_headers(headers, "127.0.0.2", b"https", b"example.com:8080", None)
    assert list(kept.items()) == [
        (b"X-Forwarded-Host", [b"example.com:8080"]),
        (b"X-Forwarded-For", [b"10.0.0.1, 10.0.0.3, 127.0.0.2"]),
        (b"Accept", [b"*/*"]),
        (b"X-Forwarded-Proto", [b"https"]),
    ]
    assert headers[1:3] == [(b"X-Forwarded-For", b"10.0.0.1"), (b"X-Forwarded-For", b"10.0.0.3")]


def test_request_without_host_gets_the_hubs_and_no_forwarded_host():
    """
    A consumer that sent no Host (HTTP/1.0) gets the hub's own address as
    Host, and no X-Forwarded-Host, not a forged one.
    """
    headers = consumer_headers((b"X-Forwarded-Host", b"evil"))
    kept = forwarded_headers(headers, "127.0.0.1", b"http", None, b"127.0.0.1:8080")
    assert kept == {
        b"Host": [b"127.0.0.1:8080"],
        b"X-Forwarded-For": [b"127.0.0.1"],
        b"X-Forwarded-Proto": [b"http"],
    }
