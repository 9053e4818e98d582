"""
Header rewriting between consumer and worker.
"""

from twisted.web.http_headers import Headers

from pothead.headers import add_forwarded, end_to_end


def test_end_to_end_drops_hop_by_hop_and_connection_listed():
    """
    Hop-by-hop headers, and any header the Connection header names, are not
    forwarded; everything else is, repeated values in order.
    """
    headers = Headers()
    for name, value in [
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
    ]:
        headers.addRawHeader(name, value)
    kept = end_to_end(headers)
    assert dict(kept.getAllRawHeaders()) == {
        b"Cookie": [b"a=1", b"b=2"],
        b"Host": [b"example.com"],
    }


def test_forwarded_headers_added():
    """
    X-Forwarded-For gets the consumer's address appended; -Proto and -Host
    describe the hop the hub received.
    """
    headers = Headers({b"X-Forwarded-For": [b"10.0.0.1"], b"X-Forwarded-Host": [b"evil"]})
    add_forwarded(headers, "127.0.0.2", b"https", b"example.com:8080")
    assert headers.getRawHeaders(b"x-forwarded-for") == [b"10.0.0.1, 127.0.0.2"]
    assert headers.getRawHeaders(b"x-forwarded-proto") == [b"https"]
    assert headers.getRawHeaders(b"x-forwarded-host") == [b"example.com:8080"]


def test_forwarded_host_removed_without_host():
    """
    A consumer that sent no Host gets no X-Forwarded-Host, not a forged one.
    """
    headers = Headers({b"X-Forwarded-Host": [b"evil"]})
    add_forwarded(headers, "127.0.0.1", b"http", None)
    assert headers.getRawHeaders(b"x-forwarded-host") is None
    assert headers.getRawHeaders(b"x-forwarded-for") == [b"127.0.0.1"]
