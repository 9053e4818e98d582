"""
The hub's side of HTTP/1.1 on a slot: the bytes of a request, and a parser
for the worker's response.

The hub is the HTTP client on every attached slot, over a connection it
accepted, for one request at a time.  Twisted's client protocol does that
too, but through a general-purpose state machine, Deferreds and producer
proxies that cost the hub about a fifth of its time per request, and it
keeps to itself what a proxy must pass on exactly: the raw
``Content-Length`` and where it stood, bytes that follow a response, every
spelling of ``Connection: close``.  This parser hands the slot each part of
the response as it arrives, nothing more.

Framing follows RFC 9112 section 6: no body for HEAD, 1xx, 204 and 304;
chunked when ``Transfer-Encoding`` ends in ``chunked``; read until close
for any other transfer coding or when there is no ``Content-Length``; and
``Content-Length`` otherwise.  Interim (1xx) responses are skipped.
"""

from __future__ import annotations

from typing import Callable

from pothead.http1 import (
    NO_BODY_CODES,
    BadMessage,
    BodyReader,
    after_head,
    content_length,
    field_tokens,
    field_values,
    head_end,
    is_chunked,
    parse_fields,
)

#: The longest response head line the hub reads, and the longest head.
MAX_LINE = 64 * 1024
MAX_HEAD = 1024 * 1024


class BadResponse(BadMessage):
    """
    A worker's response that is not valid HTTP/1.1.
    """


def request_head(
    method: bytes, target: bytes, headers: dict[bytes, list[bytes]], body_length: int | None
) -> bytes:
    """
    The head of the request a worker is sent: request line,
    ``Content-Length`` first if there is a body (or the method is PUT or
    POST), then every header in order.

    The method and target are sent as the consumer's request had them:
    L{pothead.request} accepted only a token and a target of visible ASCII.
    """
    lines = [method + b" " + target + b" HTTP/1.1\r\n"]
    if body_length is not None:
        lines.append(b"Content-Length: %d\r\n" % (body_length,))
    elif method in (b"PUT", b"POST"):
        lines.append(b"Content-Length: 0\r\n")
    for name, values in headers.items():
        for value in values:
            lines.append(name + b": " + value + b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


class ResponseHead:
    """
    A worker's status line and headers.

    :ivar version: C{(major, minor)}.
    :ivar headers: every header as sent, in order: C{(name, value)} pairs
        with names as the worker spelled them.
    :ivar content_length: the raw ``Content-Length`` value, if the body is
        framed by it (or the response has none and the worker sent one).
    :ivar keep_alive: whether the connection may carry another request
        after this response.
    """

    __slots__ = ("version", "code", "phrase", "headers", "content_length", "keep_alive")

    def __init__(self, version: tuple[int, int], code: int, phrase: bytes,
                 headers: list[tuple[bytes, bytes]]) -> None:
        self.version = version
        self.code = code
        self.phrase = phrase
        self.headers = headers
        self.content_length: bytes | None = None
        self.keep_alive = False

    def values(self, name: bytes) -> list[bytes]:
        """
        The values of every header called C{name} (lower case), in order.
        """
        return field_values(self.headers, name)

    def tokens(self, name: bytes) -> set[bytes]:
        """
        The comma-separated tokens of every C{name} header, lower case.
        """
        return field_tokens(self.headers, name)



class ResponseParser:
    """
    Parse one response to a request made with C{method}, handing on its
    parts as they arrive.

    :param head: called with the L{ResponseHead} once the head is in.
    :param body: called with each piece of the (de-chunked) body.
    :param done: called once the response is complete, with whatever bytes
        followed it.
    """

    def __init__(
        self,
        method: bytes,
        head: Callable[[ResponseHead], None],
        body: Callable[[bytes], None],
        done: Callable[[bytes], None],
    ) -> None:
        self._head_only = method == b"HEAD"
        self._on_head = head
        self._on_done = done
        self._buffer = b""
        self._body = BodyReader(body, self._complete, BadResponse)
        self._in_head = True
        self.started = False
        self.finished = False

    def feed(self, data: bytes) -> None:
        """
        Parse the next bytes from the worker.

        :raise BadResponse: if they are not a valid response.
        """
        self.started = True
        if self._in_head:
            self._head_bytes(data)
        else:
            self._body.feed(data)

    def connection_lost(self) -> bool:
        """
        The worker closed the connection.

        :return: whether that completed the response (a body read until
            close); otherwise the response broke off.
        """
        if not self._in_head:
            self._body.close()
        return self.finished

    def _complete(self, rest: bytes) -> None:
        self.finished = True
        self._on_done(rest)

    def _head_bytes(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        end = head_end(buffer)
        if end < 0:
            if len(buffer) > MAX_HEAD or (b"\n" not in buffer and len(buffer) > MAX_LINE):
                raise BadResponse("response head too large")
            self._buffer = buffer
            return
        self._buffer = b""
        head, rest = buffer[:end], after_head(buffer, end)
        if len(head) > MAX_HEAD:
            raise BadResponse("response head too large")
        response = _parse_head(head)
        if 100 <= response.code < 200:
            # An interim response (100 Continue, 103 Early Hints): the
            # final one follows.
            if rest:
                self._head_bytes(rest)
            return
        self._in_head = False
        length = self._frame(response)
        self._on_head(response)
        if length == _CHUNKED:
            self._body.chunked(rest)
        elif length == _UNTIL_CLOSE:
            self._body.until_close(rest)
        else:
            self._body.counted(length, rest)

    def _frame(self, response: ResponseHead) -> int:
        """
        Decide how the body is delimited, and whether the connection can
        be used again.

        :return: the body's length, or L{_CHUNKED} or L{_UNTIL_CLOSE}.
        """
        connection = response.tokens(b"connection")
        if response.version >= (1, 1):
            response.keep_alive = b"close" not in connection
        else:
            response.keep_alive = b"keep-alive" in connection and b"close" not in connection
        lengths = response.values(b"content-length")
        if self._head_only or response.code in NO_BODY_CODES:
            response.content_length = lengths[0] if lengths else None
            return 0
        codings = response.values(b"transfer-encoding")
        if is_chunked(codings):
            return _CHUNKED
        if codings or not lengths:
            response.keep_alive = False
            return _UNTIL_CLOSE
        length = content_length(lengths, BadResponse)
        response.content_length = lengths[0] if len(lengths) == 1 else b"%d" % (length,)
        return length


#: How L{ResponseParser._frame} says a body is chunked or read until close.
_CHUNKED, _UNTIL_CLOSE = -1, -2


def _parse_head(head: bytes) -> ResponseHead:
    lines = head.split(b"\n")
    status = lines[0].rstrip(b"\r")
    parts = status.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
        raise BadResponse(f"invalid status line {status[:80]!r}")
    version = parts[0][5:].split(b".")
    code = parts[1]
    if len(version) != 2 or not all(v.isdigit() for v in version):
        raise BadResponse(f"invalid HTTP version {parts[0][:20]!r}")
    if len(code) != 3 or not code.isdigit():
        raise BadResponse(f"invalid status code {code[:20]!r}")
    return ResponseHead(
        (int(version[0]), int(version[1])),
        int(code),
        parts[2] if len(parts) == 3 else b"",
        parse_fields(lines[1:], BadResponse, strict=False),
    )
