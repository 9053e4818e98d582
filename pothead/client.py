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

import re
from typing import Callable

#: A request method is an HTTP token (RFC 9110 section 5.6.2).
_TOKEN = re.compile(rb"\A[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")

#: A request target has no whitespace, control or non-ASCII bytes.
_TARGET = re.compile(rb"\A[\x21-\x7e]+\Z")

_CHUNK_SIZE = re.compile(rb"\A([0-9A-Fa-f]{1,16})[ \t]*(?:;.*)?\Z")

#: The longest response head line the hub reads, and the longest head.
MAX_LINE = 64 * 1024
MAX_HEAD = 1024 * 1024

_NO_BODY_CODES = (204, 304)


class InvalidRequest(ValueError):
    """
    A consumer request that cannot be written as HTTP/1.1 for a worker.
    """


class BadResponse(ValueError):
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

    :raise InvalidRequest: if the method or target cannot be sent as they are.
    """
    if not _TOKEN.match(method):
        raise InvalidRequest(f"invalid method {method!r}")
    if not _TARGET.match(target):
        raise InvalidRequest(f"invalid request target {target!r}")
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
        return [value for key, value in self.headers if key.lower() == name]

    def tokens(self, name: bytes) -> set[bytes]:
        """
        The comma-separated tokens of every C{name} header, lower case.
        """
        return {
            token.strip().lower()
            for value in self.values(name)
            for token in value.split(b",")
            if token.strip()
        }


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
        self._on_body = body
        self._on_done = done
        self._buffer = b""
        self._feed: Callable[[bytes], None] = self._head_bytes
        self._remaining = 0
        self.started = False
        self.finished = False

    def feed(self, data: bytes) -> None:
        """
        Parse the next bytes from the worker.

        :raise BadResponse: if they are not a valid response.
        """
        self.started = True
        self._feed(data)

    def connection_lost(self) -> bool:
        """
        The worker closed the connection.

        :return: whether that completed the response (a body read until
            close); otherwise the response broke off.
        """
        if self._feed == self._until_close:
            self._complete(b"")
            return True
        return self.finished

    def _complete(self, rest: bytes) -> None:
        self.finished = True
        self._on_done(rest)

    # The head.

    def _head_bytes(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        end = _head_end(buffer)
        if end < 0:
            if len(buffer) > MAX_HEAD or (b"\n" not in buffer and len(buffer) > MAX_LINE):
                raise BadResponse("response head too large")
            self._buffer = buffer
            return
        self._buffer = b""
        head, rest = buffer[:end], buffer[end:]
        rest = rest[2:] if rest.startswith(b"\r\n") else rest[1:]
        if len(head) > MAX_HEAD:
            raise BadResponse("response head too large")
        response = _parse_head(head)
        if 100 <= response.code < 200:
            # An interim response (100 Continue, 103 Early Hints): the
            # final one follows.
            if rest:
                self._head_bytes(rest)
            return
        has_body = self._frame(response)
        self._on_head(response)
        if not has_body:
            self._complete(rest)
        elif rest:
            self._feed(rest)

    def _frame(self, response: ResponseHead) -> bool:
        """
        Decide how the body is delimited, and whether the connection can
        be used again.

        :return: whether a body follows the head.
        """
        connection = response.tokens(b"connection")
        if response.version >= (1, 1):
            response.keep_alive = b"close" not in connection
        else:
            response.keep_alive = b"keep-alive" in connection and b"close" not in connection
        lengths = response.values(b"content-length")
        if self._head_only or response.code in _NO_BODY_CODES:
            response.content_length = lengths[0] if lengths else None
            return False
        codings = response.values(b"transfer-encoding")
        if codings:
            if codings[-1].split(b",")[-1].strip().lower() == b"chunked":
                self._feed = self._chunk_size
            else:
                self._read_until_close(response)
            return True
        if not lengths:
            self._read_until_close(response)
            return True
        length = _content_length(lengths)
        response.content_length = lengths[0] if len(lengths) == 1 else b"%d" % (length,)
        self._remaining = length
        self._feed = self._fixed_body
        return length > 0

    def _read_until_close(self, response: ResponseHead) -> None:
        response.keep_alive = False
        self._feed = self._until_close

    # The body.

    def _counted(self, data: bytes) -> bytes | None:
        """
        Pass on the body bytes still counted in C{_remaining}; once they
        are all in, return what follows them.
        """
        if len(data) < self._remaining:
            self._remaining -= len(data)
            self._on_body(data)
            return None
        piece, rest = data[: self._remaining], data[self._remaining :]
        self._remaining = 0
        self._on_body(piece)
        return rest

    def _fixed_body(self, data: bytes) -> None:
        rest = self._counted(data)
        if rest is not None:
            self._complete(rest)

    def _until_close(self, data: bytes) -> None:
        self._on_body(data)

    def _line(self, data: bytes, what: str) -> tuple[bytes, bytes] | None:
        """
        The next line, without its line end, and the bytes after it; or
        L{None} while the line is incomplete (kept for the next read).
        """
        buffer = self._buffer + data if self._buffer else data
        newline = buffer.find(b"\n")
        if newline < 0:
            if len(buffer) > MAX_LINE:
                raise BadResponse(f"{what} too long")
            self._buffer = buffer
            return None
        self._buffer = b""
        return buffer[:newline].rstrip(b"\r"), buffer[newline + 1 :]

    def _chunk_size(self, data: bytes) -> None:
        got = self._line(data, "chunk size line")
        if got is None:
            return
        line, rest = got
        match = _CHUNK_SIZE.match(line)
        if match is None:
            raise BadResponse(f"invalid chunk size line {line[:40]!r}")
        size = int(match.group(1), 16)
        if size == 0:
            self._feed = self._trailer
        else:
            self._remaining = size
            self._feed = self._chunk_data
        if rest:
            self._feed(rest)

    def _chunk_data(self, data: bytes) -> None:
        rest = self._counted(data)
        if rest is None:
            return
        self._feed = self._chunk_end
        if rest:
            self._feed(rest)

    def _chunk_end(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        if buffer.startswith(b"\n"):
            rest = buffer[1:]
        elif buffer.startswith(b"\r\n"):
            rest = buffer[2:]
        elif buffer == b"\r":
            self._buffer = buffer
            return
        else:
            raise BadResponse("chunk data not followed by CRLF")
        self._buffer = b""
        self._feed = self._chunk_size
        if rest:
            self._feed(rest)

    def _trailer(self, data: bytes) -> None:
        # Trailer fields are dropped: the consumer's response is chunked by
        # twisted.web, which sends none.
        while True:
            got = self._line(data, "trailer line")
            if got is None:
                return
            line, data = got
            if not line:
                self._complete(data)
                return


def _head_end(buffer: bytes) -> int:
    """
    Where the empty line that ends a head starts (its preceding newline
    included in the head), or -1.
    """
    crlf = buffer.find(b"\n\r\n")
    lf = buffer.find(b"\n\n")
    if crlf < 0:
        return lf + 1 if lf >= 0 else -1
    if lf < 0 or crlf < lf:
        return crlf + 1
    return lf + 1


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
    headers: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        line = line.rstrip(b"\r")
        if not line:
            continue
        if line[0] in b" \t":
            # Obsolete line folding (RFC 9112 section 5.2): a continuation
            # of the previous value.
            if not headers:
                raise BadResponse("continuation line before any header")
            name, value = headers[-1]
            headers[-1] = (name, value + b" " + line.strip())
            continue
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            raise BadResponse(f"invalid header line {line[:80]!r}")
        headers.append((name, value.strip()))
    return ResponseHead(
        (int(version[0]), int(version[1])),
        int(code),
        parts[2] if len(parts) == 3 else b"",
        headers,
    )


def _content_length(values: list[bytes]) -> int:
    """
    The body length several ``Content-Length`` values agree on.

    :raise BadResponse: if they are not all the same decimal number.
    """
    lengths = {
        part.strip()
        for value in values
        for part in value.split(b",")
    }
    numbers = set()
    for length in lengths:
        if not length.isdigit():
            raise BadResponse(f"invalid Content-Length {length[:20]!r}")
        numbers.add(int(length))
    if len(numbers) != 1:
        raise BadResponse("conflicting Content-Length values")
    return numbers.pop()
