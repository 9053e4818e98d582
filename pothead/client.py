"""
The hub's HTTP/1.1 client, borrowed from Twisted.

The hub is the HTTP client on every attached slot, over a transport it
*accepted*.  Twisted's public Agent only dials out, but the protocol under
it, ``HTTP11ClientProtocol`` in the private module
``twisted.web._newclient``, works over any transport and already handles
framing, HEAD/204/304 and persistent connections.  This module is the only
place pothead imports that private module; ``tests/test_client.py`` pins
every behaviour of it that the hub relies on, so a Twisted upgrade that
changes one fails there first.

What the hub relies on:

- ``HTTP11ClientProtocol(quiescentCallback)`` calls the callback when a
  response has been read completely and the connection may carry another
  request; it closes the connection itself after ``Connection: close``.
- The quiescent callback runs *before* the response body's protocol sees
  ``ResponseDone``, so the next request must not be issued from it.
- A connection lost before any response byte fails the request with
  ``ResponseNeverReceived``; one lost later, or a malformed response, with
  ``ResponseFailed``.
- The quiescent callback runs while the response's parser, with the
  connection headers, is still attached (``wants_close``).
- For a non-HEAD response ``Content-Length`` is not in ``response.headers``
  but in ``response.length``; for HEAD it stays in the headers.
"""

from typing import Callable

from twisted.web._newclient import (
    HTTP11ClientProtocol,
    Request,
    RequestGenerationFailed,
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
)


def wants_close(client: HTTP11ClientProtocol) -> bool:
    """
    Whether the response just completed on C{client} ends its connection.

    Twisted closes only on a ``Connection`` header whose whole value is
    ``close``; a worker may also say ``Close``, ``keep-alive, close``, or
    answer in HTTP/1.0 without ``keep-alive``.  Call this from the
    quiescent callback, while the response's parser is still attached.
    """
    parser = client._parser
    tokens = {
        token.strip().lower()
        for value in parser.connHeaders.getRawHeaders(b"connection", ())
        for token in value.split(b",")
    }
    if b"close" in tokens:
        return True
    return parser.response.version < (b"HTTP", 1, 1) and b"keep-alive" not in tokens


def watch_response(client: HTTP11ClientProtocol, leftover: Callable[[bytes], None]) -> None:
    """
    Learn what Twisted's parser keeps to itself about the response being
    read on C{client}.  Call right after C{client.request()}, before any
    response byte arrives.

    - The raw ``Content-Length`` and where it stood among the other
      headers: Twisted moves it out of ``response.headers`` (and drops it
      from 304 and 204 responses altogether), and a proxy that answers
      exactly as its worker did needs both.  Set on the response as
      C{content_length} (the raw value or L{None}) and
      C{content_length_after} (how many other header names came first).
    - Bytes that arrived after the response's end in the same read:
      Twisted drops them ("rest" is ignored); they are given to
      C{leftover}, before the quiescent callback runs.
    """
    parser = client._parser
    if parser is None:
        return
    finisher = parser.finisher

    def finished(rest: bytes) -> None:
        if rest:
            leftover(rest)
        finisher(rest)

    parser.finisher = finished
    received = parser.headerReceived
    names: dict[bytes, None] = {}

    def header_received(name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower == b"content-length":
            parser.response.content_length = value
            parser.response.content_length_after = len(names)
        elif not parser.isConnectionControlHeader(lower):
            names[lower] = None
        received(name, value)

    parser.headerReceived = header_received


__all__ = [
    "HTTP11ClientProtocol",
    "Request",
    "RequestGenerationFailed",
    "RequestNotSent",
    "RequestTransmissionFailed",
    "ResponseFailed",
    "ResponseNeverReceived",
    "watch_response",
    "wants_close",
]
