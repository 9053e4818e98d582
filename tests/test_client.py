"""
The hub's side of HTTP/1.1 on a slot (pothead/client.py): the request's
bytes, and the reader of a worker's responses (llhttp), fed whole and a
byte at a time.
"""

from __future__ import annotations

import random

import pytest

from pothead.attach import DETACH_NOTICE
from pothead.http.client import (
    MAX_HEAD,
    BadResponse,
    ResponseReader,
    request_head,
)

pytestmark = pytest.mark.unit


class Parsed:
    """
    What a L{ResponseReader} handed on, for one request made with
    C{method}.
    """

    def __init__(self, method: bytes = b"GET") -> None:
        self.heads: list = []
        self.body = b""
        self.done = False
        self.notices: list = []
        self.parser = ResponseReader(self)
        self.parser.expect(method)

    def response_head(self, head) -> None:
        assert not self.heads, "a second head"
        self.heads.append(head)

    def response_body(self, data: bytes) -> None:
        assert self.heads and not self.done, "body outside the response"
        self.body += data

    def response_done(self) -> None:
        self.done = True

    def unsolicited(self, head) -> None:
        self.notices.append(head)

    @property
    def head(self):
        (head,) = self.heads
        return head


def parse(data: bytes, method: bytes = b"GET", trickle: bool = False) -> Parsed:
    parsed = Parsed(method)
    pieces = [data[i : i + 1] for i in range(len(data))] if trickle else [data]
    for piece in pieces:
        parsed.parser.feed(piece)
    return parsed


# Request heads.


def test_request_head_framing():
    """
    Request line, Content-Length first when there is a body, then every
    header in order, repeated ones included.
    """
    headers = {b"Host": [b"w"], b"X-Dup": [b"1", b"2"]}
    assert request_head(b"PATCH", b"/p?q=%20", headers, 3) == (
        b"PATCH /p?q=%20 HTTP/1.1\r\nContent-Length: 3\r\nHost: w\r\n"
        b"X-Dup: 1\r\nX-Dup: 2\r\n\r\n"
    )
    host = {b"Host": [b"w"]}
    assert request_head(b"GET", b"/", host, None) == b"GET / HTTP/1.1\r\nHost: w\r\n\r\n"
    assert request_head(b"POST", b"/", host, None) == (
        b"POST / HTTP/1.1\r\nContent-Length: 0\r\nHost: w\r\n\r\n"
    )


# Responses: framing.

FRAMED = [
    # (response bytes, method, code, body, content_length, keep_alive)
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\n\r\nok", b"GET", 200, b"ok", b"2", True),
    (b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n", b"POST", 201, b"abcde", None, True),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n", b"HEAD", 200, b"", b"7", True),
    (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\nETag: x\r\n\r\n", b"GET", 304, b"",
     b"7", True),
    (b"HTTP/1.1 204 No Content\r\n\r\n", b"DELETE", 204, b"", None, True),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", b"GET", 200, b"", b"0", True),
    (b"HTTP/1.1 200 OK\r\nContent-Length:  03 \r\n\r\nabc", b"GET", 200, b"abc", b"3", True),
    (b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive, Close\r\nContent-Length: 1\r\n\r\nx", b"GET",
     200, b"x", b"1", False),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx", b"GET", 200, b"x", b"1", False),
    (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nx", b"GET", 200,
     b"x", b"1", True),
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"
     b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx", b"POST", 200, b"x", b"1", True),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", b"HEAD", 200, b"", b"10", True),
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", b"HEAD",
     200, b"", b"10", True),
]


@pytest.mark.parametrize("trickle", [False, True], ids=["whole", "byte-at-a-time"])
@pytest.mark.parametrize("data, method, code, body, length, keep_alive", FRAMED)
def test_response_framing(data, method, code, body, length, keep_alive, trickle):
    """
    Each response is framed as RFC 9112 says, whole or a byte at a time,
    and what follows a response that keeps the connection is read as the
    next response: here a detach notice that answers no request.
    """
    parsed = parse(data + (DETACH_NOTICE if keep_alive else b""), method, trickle)
    assert (parsed.head.code, parsed.body, parsed.head.content_length) == (code, body, length)
    assert parsed.head.keep_alive is keep_alive and parsed.done
    notices = [(notice.code, notice.values(b"pothead-requeue")) for notice in parsed.notices]
    assert notices == ([(503, [b"1"])] if keep_alive else [])


def test_head_keeps_every_header_in_order():
    """
    Every header is handed on as sent, in order, names as spelled, values
    without surrounding whitespace; the reason phrase as sent.
    """
    parsed = parse(
        b"HTTP/1.1 404 Not  Here\r\nX-B: 2\r\nx-a:  1 \r\nX-B: 3\r\nContent-Length: 0\r\n\r\n"
    )
    head = parsed.head
    assert (head.version, head.code, head.phrase) == ((1, 1), 404, b"Not  Here")
    assert head.headers == [
        (b"X-B", b"2"), (b"x-a", b"1"), (b"X-B", b"3"), (b"Content-Length", b"0"),
    ]
    assert parse(b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n").head.phrase == b""


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 200 OK\r\n\r\nuntil close",
        b"HTTP/1.0 200 OK\r\n\r\nuntil close",
    ],
)
def test_body_without_length_is_read_until_close(data):
    """
    A body with no length runs until the worker closes the connection,
    which completes it.
    """
    parsed = parse(data)
    assert parsed.head.keep_alive is False and parsed.head.content_length is None
    assert (parsed.body, parsed.done) == (b"until close", False)
    assert parsed.parser.connection_lost() is True and parsed.done


def test_connection_lost_before_any_byte_or_mid_response():
    """
    A connection lost before any byte, or mid-response, does not complete
    the response; the reader tells the two apart.
    """
    parsed = Parsed()
    assert (parsed.parser.connection_lost(), parsed.parser.started) == (False, False)
    for partial in (b"HTTP/1.1 200 OK\r\nContent-", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab",
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"):
        parsed = parse(partial)
        assert (parsed.parser.connection_lost(), parsed.parser.started) == (False, True)
        assert not parsed.done


@pytest.mark.parametrize(
    "data",
    [
        b"garbage garbage\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/x.1 200 OK\r\n\r\n",
        b"HTTP/1.1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nNo colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Space : 1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n folded first\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\nabcde\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nA\nabcdefghij\n0\n\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff1\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        b"HTTP/1.1 200 OK\nContent-Length: 1\n\nx",
        b"HTTP/1.1 200 OK\r\nX-Long: a\r\n  b\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\rb\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\x00b\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\nContent-Length: 3\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n",
        b"HTTP/1.1 000 Zero\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 O\x01K\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nNEXT",
    ],
)
def test_malformed_response_is_refused(data):
    """
    A response llhttp refuses, or one the hub must not relay (status 000,
    a control byte in the reason, HTTP/2.0, a switch of protocols), or
    garbage after a response, raises BadResponse.
    """
    with pytest.raises(BadResponse):
        parse(data)


@pytest.mark.parametrize("coding", [b"gzip", b"gzip, chunked", b"chunked, gzip", b"identity"])
def test_transfer_codings_other_than_chunked_are_refused(coding):
    """
    A body under a transfer coding other than chunked alone is refused:
    llhttp does not undo the coding, and Transfer-Encoding is not relayed,
    so the consumer would take coded bytes for the body.
    """
    with pytest.raises(BadResponse, match="transfer codings"):
        parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: %s\r\n\r\n0\r\n\r\n" % coding)


def test_transfer_coding_on_a_response_without_body_is_relayed():
    """
    A HEAD, 204 or 304 response has no body to decode: its
    Transfer-Encoding is only dropped, as a hop-by-hop header.
    """
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
    assert parse(head, method=b"HEAD").head.code == 200
    assert parse(b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: gzip\r\n\r\n").head.code == 304


def test_many_interim_responses_are_skipped():
    """
    Thousands of 100 Continue before the final response are skipped one
    after another, with no recursion.
    """
    parsed = parse(b"HTTP/1.1 100 Continue\r\n\r\n" * 3000
                   + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert (parsed.head.code, parsed.body, parsed.done) == (200, b"ok", True)


def test_oversized_head_is_refused_before_it_ends():
    """
    A response head that keeps growing is refused once it is over
    MAX_HEAD, before it ends.
    """
    parsed = Parsed()
    parsed.parser.feed(b"HTTP/1.1 200 OK\r\n")
    with pytest.raises(BadResponse):
        for _ in range(MAX_HEAD // 1000 + 2):
            parsed.parser.feed(b"X-Pad: " + b"p" * 991 + b"\r\n")


def test_mutated_responses_fail_only_as_bad_responses():
    """
    Thousands of seeded mutations of valid responses, split at random
    points: the parser either parses them or raises BadResponse, never
    anything a slot would not expect.
    """
    seeds = [data for data, *_ in FRAMED]
    alphabet = b"HTTP/1.0 2345 :\r\n\t;,-0123456789abcdefxyzCKLT"
    inserts = [b"\r\n", b"\n", b"\r\n\r\n", b"0\r\n", b"Transfer-Encoding: chunked\r\n",
               b"Content-Length: 99999999999999999999\r\n"]
    rng = random.Random(4)
    outcomes = {"parsed": 0, "refused": 0}
    for _ in range(5000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 6)):
            pos = rng.randrange(len(data) + 1)
            choice = rng.random()
            if choice < 0.4:
                del data[pos : pos + rng.randint(1, 4)]
            elif choice < 0.8:
                data[pos:pos] = bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 4)))
            else:
                data[pos:pos] = rng.choice(inserts)
        parsed = Parsed(rng.choice([b"GET", b"HEAD", b"POST"]))
        cut = rng.randrange(len(data) + 1)
        try:
            for piece in (bytes(data[:cut]), bytes(data[cut:])):
                if piece:
                    parsed.parser.feed(piece)
            parsed.parser.connection_lost()
        except BadResponse:
            outcomes["refused"] += 1
        else:
            outcomes["parsed"] += 1
    assert min(outcomes.values()) > 500, outcomes
