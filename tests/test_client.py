"""
Pins the behaviour of Twisted's private HTTP/1.1 client that the hub's
slots rely on (see pothead/client.py).  If a Twisted upgrade changes any of
it, these tests fail before the hub misbehaves.
"""

from __future__ import annotations

from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers

from pothead.client import (
    HTTP11ClientProtocol,
    Request,
    ResponseFailed,
    ResponseNeverReceived,
    wants_close,
)


class Recorder(Protocol):
    def __init__(self, events):
        self.events = events
        self.data = b""

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason=None):
        self.events.append(("body done", reason.type))


def connected_client(events):
    client = HTTP11ClientProtocol(lambda c: events.append(("quiescent", c.state)))
    transport = StringTransport()
    client.makeConnection(transport)
    return client, transport


def send(client, method=b"GET"):
    request = Request(method, b"/", Headers({b"Host": [b"w"]}), None, persistent=True)
    results = []
    client.request(request).addBoth(results.append)
    return results


def test_quiescent_before_body_done():
    """
    The quiescent callback runs before the body protocol learns the
    response is complete, with the client already able to send again.
    """
    events = []
    client, transport = connected_client(events)
    results = send(client)
    client.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
    body = Recorder(events)
    results[0].deliverBody(body)
    client.dataReceived(b"ok")
    assert events == [("quiescent", "QUIESCENT"), ("body done", ResponseDone)]
    assert body.data == b"ok"


def test_connection_close_is_not_quiescent():
    """
    A response with Connection: close closes the connection and never
    calls the quiescent callback.
    """
    events = []
    client, transport = connected_client(events)
    results = send(client)
    client.dataReceived(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
    results[0].deliverBody(Recorder(events))
    assert events == [("body done", ResponseDone)]
    assert transport.disconnecting


def test_lost_before_any_byte():
    """
    A connection lost before any response byte fails with
    ResponseNeverReceived.
    """
    client, transport = connected_client([])
    results = send(client)
    client.connectionLost(Failure(ConnectionDone()))
    assert results[0].check(ResponseNeverReceived)


def test_lost_mid_head_and_malformed():
    """
    A connection lost inside the head, or a malformed status line, fails
    with ResponseFailed that is not ResponseNeverReceived.
    """
    client, _ = connected_client([])
    results = send(client)
    client.dataReceived(b"HTTP/1.1 200 OK\r\nContent-")
    client.connectionLost(Failure(ConnectionDone()))
    assert results[0].check(ResponseFailed) and not results[0].check(ResponseNeverReceived)

    client, transport = connected_client([])
    results = send(client)
    client.dataReceived(b"garbage garbage\r\n\r\n")
    client.connectionLost(Failure(ConnectionDone()))
    assert results[0].check(ResponseFailed) and not results[0].check(ResponseNeverReceived)


def test_content_length_is_length_except_for_head():
    """
    A GET response's Content-Length is response.length, not a header; a
    HEAD response keeps it as a header.
    """
    client, _ = connected_client([])
    results = send(client)
    client.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\n")
    response = results[0]
    assert response.length == 5
    assert response.headers.getRawHeaders(b"content-length") is None
    response.deliverBody(Recorder([]))
    client.dataReceived(b"12345")

    results = send(client, b"HEAD")
    client.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n")
    assert results[0].headers.getRawHeaders(b"content-length") == [b"7"]


def test_request_framing():
    """
    A request is written with exactly its headers, in order, and a body
    producer's length as Content-Length.
    """
    from io import BytesIO

    from pothead.body import BufferedBody

    client, transport = connected_client([])
    headers = Headers()
    headers.addRawHeader(b"Host", b"w")
    headers.addRawHeader(b"X-Dup", b"1")
    headers.addRawHeader(b"X-Dup", b"2")
    request = Request(b"PATCH", b"/p?q=%20", headers, BufferedBody(BytesIO(b"abc"), 3), persistent=True)
    client.request(request)
    assert transport.value() == (
        b"PATCH /p?q=%20 HTTP/1.1\r\nContent-Length: 3\r\nHost: w\r\n"
        b"X-Dup: 1\r\nX-Dup: 2\r\n\r\nabc"
    )


def quiescent_verdicts(head: bytes) -> list[bool]:
    verdicts = []
    client = HTTP11ClientProtocol(lambda c: verdicts.append(wants_close(c)))
    client.makeConnection(StringTransport())
    results = send(client)
    client.dataReceived(head)
    results[0].deliverBody(Recorder([]))
    return verdicts


def test_wants_close_reads_every_form_of_close():
    """
    wants_close sees a close Twisted's client would miss, and only then.
    """
    assert quiescent_verdicts(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n") == [False]
    assert quiescent_verdicts(
        b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive, Close\r\nContent-Length: 0\r\n\r\n"
    ) == [True]
    assert quiescent_verdicts(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n") == [True]
    assert quiescent_verdicts(
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"
    ) == [False]
