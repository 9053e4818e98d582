"""
The hub's side of HTTP/1.1 on a slot: the bytes of a request, and the
reader of the worker's responses.

The hub is the HTTP client on every attached slot, over a connection it
accepted, for one request at a time.  Twisted's client protocol does that
too, but through a general-purpose state machine, Deferreds and producer
proxies that cost the hub about a fifth of its time per request.  Here
llhttp (L{pothead.http.llhttp}) reads the responses, strictly, and
L{ResponseReader} hands the slot each part of one as it arrives.

Framing follows RFC 9112 section 6, as llhttp reads it: no body for 1xx,
204 and 304; chunked when ``Transfer-Encoding`` is ``chunked`` (any other
transfer coding on a body is refused: the hub would drop the header but
not undo the coding); read until close when there is neither it nor
``Content-Length``; ``Content-Length`` otherwise.  A response to HEAD has
no body either, which llhttp cannot know: see L{ResponseReader}.  Interim
(1xx) responses are skipped; a worker may not switch protocols (101).
"""

from __future__ import annotations

import re
from typing import Protocol

from httptools import HttpResponseParser

from pothead.http.llhttp import feed
from pothead.http.message import NO_BODY_CODES, BadMessage, field_tokens, field_values

#: The longest response head the hub reads (interim responses before it
#: included).
MAX_HEAD = 1024 * 1024

#: What a reason phrase may not hold (RFC 9112 section 4: HTAB, SP,
#: VCHAR and obs-text only); llhttp lets it through.
_BAD_PHRASE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")

#: The versions of HTTP a worker may answer in.
_VERSIONS = {"1.1": (1, 1), "1.0": (1, 0)}


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
    llhttp (L{pothead.http.llhttp}) accepted only a method it knows and a
    target of visible ASCII.
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
    :ivar content_length: the ``Content-Length`` value (as digits only), if
        the body is framed by it (or the response has none and the worker
        sent one).
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



class ResponseReceiver(Protocol):
    """
    What a L{ResponseReader} hands the parts of responses to.
    """

    def response_head(self, head: ResponseHead) -> None:
        """The head of the response to the request sent."""

    def response_body(self, data: bytes) -> None:
        """A piece of its (de-chunked) body."""

    def response_done(self) -> None:
        """The response is complete."""

    def unsolicited(self, head: ResponseHead) -> None:
        """
        The head of a response to no request: a worker's notice (a
        detach, or a hold of L{pothead.bidding}), handed on once complete,
        or a worker gone wrong, handed on before its body.
        """


class ResponseReader:
    """
    Read the responses a worker sends on one connection, one for each
    request the hub sent (L{expect}), and hand their parts on.

    llhttp cannot be told that a response answers HEAD and so has no
    body: its head is fed to llhttp alone (it ends at the first empty
    line, as llhttp refuses any line end but CRLF), and llhttp starts
    afresh after it.

    :ivar started: whether any byte of the expected response has arrived.
    :ivar finished: whether the expected response is complete.
    """

    def __init__(self, receiver: ResponseReceiver) -> None:
        self._receiver = receiver
        self._parser = HttpResponseParser(self)
        self._expected = False
        self._head_only = False
        self._until_close = False
        self._in_head = True
        self._head_size = 0
        self._interim = False
        self._phrase = b""
        self._fields: list[tuple[bytes, bytes]] = []
        self._head_buffer = b""
        self._responses = 0
        self._unsolicited: ResponseHead | None = None
        self.started = False
        self.finished = False

    def expect(self, method: bytes) -> None:
        """
        A request made with C{method} was sent: the next response is its.
        """
        self._expected = True
        self._head_only = method == b"HEAD"
        self.started = self.finished = False

    def feed(self, data: bytes) -> None:
        """
        Read the next bytes from the worker.

        :raise BadResponse: if they are not a valid response.
        """
        if self._expected:
            self.started = True
            if self._head_only and self._in_head:
                self._feed_head_only(data)
                return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        if feed(self._parser, data, BadResponse) >= 0:
            raise BadResponse("a worker switched protocols")
        if self._in_head:
            # A head still incomplete after this read (llhttp holds an
            # unfinished field itself): bounded here, a read at a time.
            self._head_size += len(data)
            if self._head_size > MAX_HEAD:
                raise BadResponse("response head too large")

    def _feed_head_only(self, data: bytes) -> None:
        """
        Feed llhttp the head of a response to HEAD and no more; after it,
        the rest to a fresh llhttp.
        """
        searched = max(0, len(self._head_buffer) - 3)
        buffer = self._head_buffer + data
        responses = self._responses
        while self._responses == responses:
            end = buffer.find(b"\r\n\r\n", searched)
            if end < 0:
                self._head_buffer = buffer
                if len(buffer) > MAX_HEAD:
                    raise BadResponse("response head too large")
                return
            head, buffer = buffer[: end + 4], buffer[end + 4 :]
            searched = 0
            self._feed(head)
        self._head_buffer = b""
        self._parser = HttpResponseParser(self)
        if buffer:
            self.feed(buffer)

    def connection_lost(self) -> bool:
        """
        The worker closed the connection.

        :return: whether that completed the expected response (a body read
            until close); otherwise it broke off.
        """
        if self._expected and not self._in_head and self._until_close:
            self._complete()
        return self.finished

    # llhttp's callbacks.

    def on_message_begin(self) -> None:
        self._phrase = b""
        self._fields = []

    def on_status(self, phrase: bytes) -> None:
        self._phrase += phrase

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_head:
            self._head_size += len(name) + len(value) + 4
            if self._head_size > MAX_HEAD:
                raise BadResponse("response head too large")
            self._fields.append((name, value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        parser = self._parser
        code = parser.get_status_code()
        version = _VERSIONS.get(parser.get_http_version())
        if version is None:
            raise BadResponse(f"HTTP version {parser.get_http_version()} in a response")
        if code < 100:
            raise BadResponse(f"invalid status code {code:03d}")
        if _BAD_PHRASE.search(self._phrase):
            raise BadResponse(f"invalid reason phrase {self._phrase[:40]!r}")
        if code == 101:
            raise BadResponse("a worker switched protocols")
        self._interim = code < 200
        if self._interim:
            # 100 Continue, 103 Early Hints: the final response follows.
            return
        self._in_head = False
        head = ResponseHead(version, code, self._phrase, self._fields)
        head.keep_alive = parser.should_keep_alive()
        lengths = head.values(b"content-length")
        if lengths:
            # llhttp has refused anything but one decimal number.
            head.content_length = b"%d" % (int(lengths[0]),)
        codings = head.values(b"transfer-encoding")
        chunked = _is_chunked(codings)
        if codings and not self._head_only and code not in NO_BODY_CODES and (
            head.tokens(b"transfer-encoding") != {b"chunked"}
        ):
            # llhttp takes the chunks off (or reads to the close), but not
            # a gzip or other coding under them; and Transfer-Encoding is
            # not relayed: the consumer would get coded bytes presented
            # as the body itself.
            raise BadResponse(
                f"transfer codings {b', '.join(codings).decode('latin-1')!r} not supported"
            )
        self._until_close = not lengths and not chunked
        if not self._expected:
            if head.content_length == b"0":
                # Handed on once complete: the receiver may expect the next
                # response at once (a held slot that bids, pothead.bidding).
                self._unsolicited = head
            else:
                # Not a notice; the receiver drops it without its body.
                self._receiver.unsolicited(head)
            return
        if self._head_only:
            # llhttp would wait for the body a Content-Length announces.
            self._receiver.response_head(head)
            self._complete()
            return
        if self._until_close and code not in (204, 304):
            head.keep_alive = False
        else:
            self._until_close = False
        if chunked:
            head.content_length = None
        self._receiver.response_head(head)

    def on_body(self, data: bytes) -> None:
        if self._expected:
            self._receiver.response_body(data)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
        elif self._expected:
            self._complete()
        elif self._unsolicited is not None:
            head, self._unsolicited = self._unsolicited, None
            self._in_head = True
            self._head_size = 0
            self._receiver.unsolicited(head)

    def _complete(self) -> None:
        self._expected = False
        self._in_head = True
        self._head_size = 0
        self._responses += 1
        self.finished = True
        self._receiver.response_done()


def _is_chunked(codings: list[bytes]) -> bool:
    """
    Whether ``Transfer-Encoding`` values make a chunked body: their last
    coding is ``chunked``.
    """
    return bool(codings) and codings[-1].rsplit(b",", 1)[-1].strip().lower() == b"chunked"
