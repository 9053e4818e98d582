"""
HTTP/1.1 message syntax (RFC 9112) as both of the hub's sides need it:
where a head ends, its header fields, and a body framed by length, by
chunks or by the connection's close.

The hub parses requests from consumers (L{pothead.request}) and responses
from workers (L{pothead.client}); the rules for both are the same but for
what each is allowed to be lenient about, and live here once.
"""

from __future__ import annotations

import re
from typing import Callable

#: An HTTP token (RFC 9110 section 5.6.2): a method, a header name.
TOKEN = re.compile(rb"\A[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")

#: A request target has no whitespace, control or non-ASCII bytes.
TARGET = re.compile(rb"\A[\x21-\x7e]+\Z")

#: What a header value may not hold, once its line end is gone.
_FORBIDDEN_IN_VALUE = re.compile(rb"[\x00\r\n]")

_CHUNK_SIZE = re.compile(rb"\A([0-9A-Fa-f]{1,16})[ \t]*(?:;.*)?\Z")

#: Statuses whose responses never have a body (RFC 9110 section 6.4.1).
NO_BODY_CODES = (204, 304)

#: The longest chunk-size or trailer line read.
MAX_LINE = 64 * 1024


class BadMessage(ValueError):
    """
    Bytes that are not a valid HTTP/1.1 message.
    """


def head_end(buffer: bytes, start: int = 0) -> int:
    """
    Where the empty line that ends a head starts (its preceding newline
    included in the head), or -1.

    :param start: where to start looking: a head read in pieces need not
        be searched again from its beginning for every piece.
    """
    crlf = buffer.find(b"\n\r\n", start)
    lf = buffer.find(b"\n\n", start)
    if crlf < 0:
        return lf + 1 if lf >= 0 else -1
    if lf < 0 or crlf < lf:
        return crlf + 1
    return lf + 1


def after_head(buffer: bytes, end: int) -> bytes:
    """
    What follows a head that ends at C{end} (see L{head_end}) and the
    empty line after it.
    """
    return buffer[end + 2 :] if buffer.startswith(b"\r\n", end) else buffer[end + 1 :]


def parse_fields(
    lines: list[bytes], error: type[BadMessage], strict: bool
) -> list[tuple[bytes, bytes]]:
    """
    The header fields of a head's lines (its first line excluded), in
    order, names as sent and values without surrounding whitespace.

    Obsolete line folding (RFC 9112 section 5.2) is joined with a space.

    :param strict: whether names must be tokens and values free of control
        bytes, as a request must be: a proxy that passes on a field another
        server reads differently opens the way to request smuggling.
    :raise error: for a line that is not a header field.
    """
    fields: list[tuple[bytes, bytes]] = []
    for line in lines:
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            continue
        if line[0] in b" \t":
            if not fields:
                raise error("continuation line before any header")
            name, value = fields[-1]
            fields[-1] = (name, value + b" " + line.strip())
            continue
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            raise error(f"invalid header line {line[:80]!r}")
        value = value.strip()
        if strict and (not TOKEN.match(name) or _FORBIDDEN_IN_VALUE.search(value)):
            raise error(f"invalid header line {line[:80]!r}")
        fields.append((name, value))
    return fields


def field_values(fields: list[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    """
    The values of every field called C{name} (lower case), in order.
    """
    return [value for key, value in fields if key.lower() == name]


def field_tokens(fields: list[tuple[bytes, bytes]], name: bytes) -> set[bytes]:
    """
    The comma-separated tokens of every C{name} field, lower case.
    """
    return {
        token.strip().lower()
        for value in field_values(fields, name)
        for token in value.split(b",")
        if token.strip()
    }


def content_length(values: list[bytes], error: type[BadMessage]) -> int:
    """
    The body length several ``Content-Length`` values agree on.

    :raise error: if they are not all the same decimal number.
    """
    numbers = set()
    for value in values:
        for part in value.split(b","):
            part = part.strip()
            if not part.isdigit():
                raise error(f"invalid Content-Length {part[:20]!r}")
            numbers.add(int(part))
    if len(numbers) != 1:
        raise error("conflicting Content-Length values")
    return numbers.pop()


def is_chunked(codings: list[bytes]) -> bool:
    """
    Whether ``Transfer-Encoding`` values make a chunked body: their last
    coding is ``chunked``.
    """
    return bool(codings) and codings[-1].split(b",")[-1].strip().lower() == b"chunked"


# The states of a BodyReader.
_COUNTED, _CHUNK_SIZE_LINE, _CHUNK_DATA, _CHUNK_END, _TRAILER, _UNTIL_CLOSE, _DONE = range(7)


class BodyReader:
    """
    Read one message body, handing on its (de-chunked) pieces as they
    arrive, and whatever bytes follow it once it is complete.

    :param body: called with each piece of the body.
    :param done: called once the body is complete, with the bytes after it.
    :param error: raised for a malformed chunked body.
    """

    __slots__ = ("_body", "_done", "_error", "_state", "_remaining", "_buffer")

    def __init__(
        self,
        body: Callable[[bytes], None],
        done: Callable[[bytes], None],
        error: type[BadMessage],
    ) -> None:
        self._body = body
        self._done = done
        self._error = error
        self._state = _DONE
        self._remaining = 0
        self._buffer = b""

    def counted(self, length: int, rest: bytes = b"") -> None:
        """
        Read a body of C{length} bytes, starting with C{rest}.
        """
        self._state, self._remaining = _COUNTED, length
        if length == 0:
            self._complete(rest)
        elif rest:
            self.feed(rest)

    def chunked(self, rest: bytes = b"") -> None:
        """
        Read a chunked body, starting with C{rest}.
        """
        self._state = _CHUNK_SIZE_LINE
        if rest:
            self.feed(rest)

    def until_close(self, rest: bytes = b"") -> None:
        """
        Read a body that the connection's close ends, starting with C{rest}.
        """
        self._state = _UNTIL_CLOSE
        if rest:
            self.feed(rest)

    @property
    def reading_until_close(self) -> bool:
        return self._state == _UNTIL_CLOSE

    def close(self) -> bool:
        """
        The connection closed.

        :return: whether that completed the body.
        """
        if self._state == _UNTIL_CLOSE:
            self._complete(b"")
        return self._state == _DONE

    def feed(self, data: bytes) -> None:
        """
        Read the next bytes of the body.

        :raise BadMessage: (its C{error} class) for a malformed chunked body.
        """
        while data:
            state = self._state
            if state == _COUNTED or state == _CHUNK_DATA:
                data = self._counted(data)
            elif state == _UNTIL_CLOSE:
                self._body(data)
                return
            elif state == _CHUNK_SIZE_LINE:
                data = self._chunk_size(data)
            elif state == _CHUNK_END:
                data = self._chunk_end(data)
            elif state == _TRAILER:
                data = self._trailer(data)
            else:
                raise self._error("bytes after the body")

    def _complete(self, rest: bytes) -> None:
        self._state = _DONE
        self._done(rest)

    def _counted(self, data: bytes) -> bytes:
        if len(data) < self._remaining:
            self._remaining -= len(data)
            self._body(data)
            return b""
        piece, rest = data[: self._remaining], data[self._remaining :]
        self._remaining = 0
        if piece:
            self._body(piece)
        if self._state == _COUNTED:
            self._complete(rest)
            return b""
        self._state = _CHUNK_END
        return rest

    def _line(self, data: bytes, what: str) -> tuple[bytes, bytes] | None:
        """
        The next line, without its line end, and the bytes after it; or
        L{None} while the line is incomplete (kept for the next read).
        """
        buffer = self._buffer + data if self._buffer else data
        newline = buffer.find(b"\n")
        if newline < 0:
            if len(buffer) > MAX_LINE:
                raise self._error(f"{what} too long")
            self._buffer = buffer
            return None
        self._buffer = b""
        line = buffer[:newline]
        return line[:-1] if line.endswith(b"\r") else line, buffer[newline + 1 :]

    def _chunk_size(self, data: bytes) -> bytes:
        got = self._line(data, "chunk size line")
        if got is None:
            return b""
        line, rest = got
        match = _CHUNK_SIZE.match(line)
        if match is None:
            raise self._error(f"invalid chunk size line {line[:40]!r}")
        size = int(match.group(1), 16)
        if size == 0:
            self._state = _TRAILER
        else:
            self._state, self._remaining = _CHUNK_DATA, size
        return rest

    def _chunk_end(self, data: bytes) -> bytes:
        buffer = self._buffer + data if self._buffer else data
        if buffer.startswith(b"\n"):
            rest = buffer[1:]
        elif buffer.startswith(b"\r\n"):
            rest = buffer[2:]
        elif buffer == b"\r":
            self._buffer = buffer
            return b""
        else:
            raise self._error("chunk data not followed by CRLF")
        self._buffer = b""
        self._state = _CHUNK_SIZE_LINE
        return rest

    def _trailer(self, data: bytes) -> bytes:
        # Trailer fields are dropped: neither side of the hub passes any on.
        while True:
            got = self._line(data, "trailer line")
            if got is None:
                return b""
            line, data = got
            if not line:
                self._complete(data)
                return b""
