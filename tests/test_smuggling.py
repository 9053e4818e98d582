"""
Request smuggling, end to end: raw consumer bytes into a real hub process,
and what a recording worker (h11, a strict parser independent of the
hub's) receives.

Whatever the hub refuses must be answered with its status, close the
connection, and send nothing to a worker, not even a valid request
pipelined behind it; whatever it accepts must reach the worker framed as
a strict parser reads the consumer's bytes.  Every case ends with a
sentinel request on a new connection: with one slot and a FIFO queue, once
the sentinel is answered every request the hub forwarded before it has
been recorded, and the hub has shown that it still serves.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

import h11
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from tests.raw_peers import WAIT, Hub, RecordingWorker, Request, exchange, run_hub

pytestmark = pytest.mark.process

#: The hub's --max-body-size here: small enough to cross in a test.
MAX_BODY = 1000

#: A valid request pipelined behind every refused one: it must not reach
#: the worker either.
AFTER = b"GET /after HTTP/1.1\r\nHost: h\r\n\r\n"

_sentinels = itertools.count()


@dataclass(frozen=True)
class Mark:
    """Where the recorder and the hub's log stood when a case began."""

    requests: int
    errors: int
    log: int


@dataclass
class Rig:
    """The hub process, and the one recording worker slot attached to it."""

    hub: Hub
    recorder: RecordingWorker

    def mark(self) -> Mark:
        return Mark(len(self.recorder), len(self.recorder.errors), self.hub.log_mark())

    def forwarded_since(self, mark: Mark) -> list[Request]:
        """
        Send a sentinel on a new connection; once it is answered, return
        what the worker received since C{mark}, sentinel excluded, after
        checking that h11 found no fault in it and the hub logged no
        traceback.
        """
        target = b"/sentinel-%d" % (next(_sentinels),)
        answer = exchange(
            self.hub.consumer_port,
            b"GET %s HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n" % (target,),
        )
        assert answer.statuses == [200], f"the hub stopped serving: {answer}"
        received = self.recorder.since(mark.requests)
        assert received and received[-1].target == target, received
        assert self.recorder.errors[mark.errors:] == [], "the worker got malformed bytes"
        assert "Traceback" not in self.hub.log_since(mark.log), self.hub.log_since(mark.log)
        return received[:-1]


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    """A hub process with a small --max-body-size and one recording slot."""
    hub = run_hub(tmp_path_factory.mktemp("hub"), "--max-body-size", str(MAX_BODY))
    recorder = RecordingWorker(hub.worker_port)
    recorder.start()
    try:
        hub.process.wait_for(r"attached to pool default")
        yield Rig(hub, recorder)
    finally:
        recorder.stop()
        hub.stop()


def head(*fields: bytes, line: bytes = b"POST / HTTP/1.1") -> bytes:
    """A request head: C{line}, ``Host: h``, C{fields}; every line ends in CRLF."""
    return b"".join(part + b"\r\n" for part in (line, b"Host: h", *fields)) + b"\r\n"


GET = b"GET / HTTP/1.1"
CHUNKED = b"Transfer-Encoding: chunked"


def check_refused(rig: Rig, raw: bytes, status: int) -> None:
    """
    C{raw}, with L{AFTER} behind it, is answered with C{status} alone, the
    connection is closed, and nothing reaches the worker.
    """
    mark = rig.mark()
    # Two answers are one too many: no need to wait for a close then.
    answer = exchange(rig.hub.consumer_port, raw + AFTER, count=2)
    assert answer.statuses == [status], answer
    assert answer.closed, "the connection stayed open after a refusal"
    assert rig.forwarded_since(mark) == []


def case(raw: bytes, status: int, id: str):
    return pytest.param(raw, status, id=id)


@pytest.mark.parametrize("raw, status", [
    case(head(b"X: a", b" b\rTransfer-Encoding: chunked") + b"0\r\n\r\n", 400,
         "fold-and-bare-cr-hide-te"),
    case(head(b"X: a", b" \x00b", line=GET), 400, "fold-with-nul"),
    case(head(b"X: a", b" b", line=GET), 400, "fold-space"),
    case(head(b"X: a", b"\tb", line=GET), 400, "fold-tab"),
])
def test_obs_fold_is_refused(rig, raw, status):
    """A header continued by obs-fold is refused with 400 and never reaches a worker."""
    check_refused(rig, raw, status)


@pytest.mark.parametrize("raw, status", [
    case(head(b"Content-Length: \x0b5\x0c") + b"abcdef", 400, "cl-vt-ff"),
    case(head(b"Transfer-Encoding: \x0bchunked") + b"0\r\n\r\n", 400, "te-vt"),
    case(head(b"X: a\x7fb", line=GET), 400, "value-del"),
    case(head(b"X: a\x01b", line=GET), 400, "value-soh"),
    case(head(b"X: a\x00b", line=GET), 400, "value-nul"),
    case(head(b"X\x7fY: a", line=GET), 400, "name-del"),
    case(head(b"X\x01Y: a", line=GET), 400, "name-soh"),
    case(head(b"X\x00Y: a", line=GET), 400, "name-nul"),
    case(head(line=b"GET /a\x00b HTTP/1.1"), 400, "target-nul"),
    case(head(line=b"GET /a\x7fb HTTP/1.1"), 400, "target-del"),
    case(head(line=b"GET /caf\xc3\xa9 HTTP/1.1"), 400, "target-utf8"),
    case(head(line=b"GET /\x80 HTTP/1.1"), 400, "target-obs-text"),
])
def test_control_and_non_ascii_bytes_are_refused(rig, raw, status):
    """A control byte in a header name or value, or a control or non-ASCII byte in the target, is refused with 400."""
    check_refused(rig, raw, status)


@pytest.mark.parametrize("raw, status", [
    case(head(line=b"GET ftp://other.example/x HTTP/1.1"), 400, "ftp-scheme"),
    case(head(line=b"GET http://u@other.example/x HTTP/1.1"), 400, "userinfo"),
    case(head(line=b"GET http://u:p@other.example/x HTTP/1.1"), 400, "userinfo-password"),
])
def test_absolute_form_other_than_http_is_refused(rig, raw, status):
    """An absolute-form target with a non-http scheme or user information is refused with 400."""
    check_refused(rig, raw, status)


@pytest.mark.parametrize("raw, status", [
    case(head(CHUNKED) + b"3;a=\x00\r\nabc\r\n0\r\n\r\n", 400, "ext-nul"),
    case(head(CHUNKED) + b"3;a\rb\r\nabc\r\n0\r\n\r\n", 400, "ext-bare-cr"),
    case(head(CHUNKED) + b"3\nabc\r\n0\r\n\r\n", 400, "size-line-bare-lf"),
    case(head(CHUNKED) + b"3\r\nabc\n0\r\n\r\n", 400, "data-bare-lf"),
    case(head(CHUNKED) + b"3;\x00\rjunk\nabc\n0\nnot-a-trailer\n\n", 400,
         "waitress-cve-2022-24761"),
    case(head(CHUNKED) + b"3\r\nabc\r\n0\r\nnot-a-trailer\r\n\r\n", 400, "trailer-not-a-field"),
    case(head(CHUNKED) + b"ffffffffffffffffff1\r\nabc\r\n0\r\n\r\n", 400, "size-overflow"),
    case(head(CHUNKED) + b" 3\r\nabc\r\n0\r\n\r\n", 400, "size-leading-space"),
    case(head(CHUNKED) + b"0x3\r\nabc\r\n0\r\n\r\n", 400, "size-0x"),
    case(head(CHUNKED) + b"3\r\nabcd\r\n0\r\n\r\n", 400, "data-longer-than-size"),
])
def test_malformed_chunks_are_refused(rig, raw, status):
    """A chunked body with a malformed size, extension, line end or trailer is refused with 400."""
    check_refused(rig, raw, status)


@pytest.mark.parametrize("raw, status", [
    case(head(b"Content-Length: " + b"9" * 5000) + b"hello", 400, "5000-digits"),
    case(head(b"Content-Length: 3", b"Content-Length: 3") + b"abc", 400, "twice-equal"),
    case(head(b"Content-Length: 3", b"Content-Length: 4") + b"abcd", 400, "twice-different"),
    case(head(b"Content-Length: 3, 3") + b"abc", 400, "list-equal"),
    case(head(b"Content-Length: 3, 4") + b"abcd", 400, "list-different"),
    case(head(b"Content-Length: +5") + b"hello", 400, "plus-sign"),
    case(head(b"Content-Length: -5") + b"hello", 400, "minus-sign"),
    case(head(b"Content-Length: 0x5") + b"hello", 400, "hex"),
    case(head(b"Content-Length: 5 5") + b"hello", 400, "space-between-digits"),
])
def test_invalid_content_length_is_refused(rig, raw, status):
    """A Content-Length that is not exactly one decimal number is refused with 400."""
    check_refused(rig, raw, status)


@pytest.mark.parametrize("raw, status", [
    case(head(b"Content-Length: 5", CHUNKED) + b"0\r\n\r\n", 400, "cl-then-te"),
    case(head(CHUNKED, b"Content-Length: 5") + b"0\r\n\r\n", 400, "te-then-cl"),
    case(head(b"Transfer-Encoding: xchunked") + b"0\r\n\r\n", 400, "xchunked"),
    case(head(b"Transfer-Encoding : chunked") + b"0\r\n\r\n", 400, "space-before-colon"),
    case(head(b"Transfer-Encoding\t: chunked") + b"0\r\n\r\n", 400, "tab-before-colon"),
    case(head(b"Transfer-Encoding: chunked, identity") + b"0\r\n\r\n", 400, "chunked-identity"),
    case(head(b"Transfer-Encoding:", b" chunked") + b"0\r\n\r\n", 400, "split-by-obs-fold"),
    case(head(b"Transfer-Encoding: gzip, chunked") + b"0\r\n\r\n", 501, "gzip-chunked"),
    case(head(CHUNKED, line=b"POST / HTTP/1.0") + b"0\r\n\r\n", 400, "in-http-1.0"),
])
def test_ambiguous_transfer_encoding_is_refused(rig, raw, status):
    """Transfer-Encoding beside Content-Length, obfuscated, or in HTTP/1.0 is refused with 400; a coding other than chunked with 501."""
    check_refused(rig, raw, status)


@pytest.mark.parametrize("raw, status", [
    case(b"GET / HTTP/1.1\nHost: h\r\n\r\n", 400, "request-line-bare-lf"),
    case(b"GET / HTTP/1.1\r\nHost: h\nX: y\r\n\r\n", 400, "field-line-bare-lf"),
    case(b"GET / HTTP/1.1\r\nHost: h\r\n\n", 400, "head-end-bare-lf"),
    case(b"GET / HTTP/1.1\nHost: h\n\n", 400, "all-bare-lf"),
    case(b"GET / HTTP/1.1\rHost: h\r\n\r\n", 400, "request-line-bare-cr"),
    case(b"GET / HTTP/1.1\r\nHost: h\rX: y\r\n\r\n", 400, "field-line-bare-cr"),
    case(b"GET / HTTP/1.1\r\nHost: h\r\n\r", 400, "head-end-bare-cr"),
    case(head(b"X: a\rb", line=GET), 400, "bare-cr-in-value"),
])
def test_bare_cr_and_lf_are_refused(rig, raw, status):
    """A bare CR or LF as a line end, or a bare CR inside a value, is refused with 400."""
    check_refused(rig, raw, status)


@pytest.mark.parametrize("raw, status", [
    case(head(b"Host: other", line=GET), 400, "several-host"),
    case(b"GET / HTTP/1.1\r\nX: y\r\n\r\n", 400, "http-1.1-without-host"),
    case(head(line=b"GET / HTTP/2.0"), 505, "http-2.0"),
    case(head(line=b"GET / HTTP/3.0"), 505, "http-3.0"),
    case(head(line=b"FOO / HTTP/1.1"), 501, "unknown-method"),
    case(b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n", 501, "connect"),
    case(b"GET /\r\n", 400, "http-0.9"),
])
def test_unservable_request_lines_are_refused(rig, raw, status):
    """Several Host headers or none in HTTP/1.1 (400), HTTP/2+ (505), an unknown method or CONNECT (501), or no version (400) are refused."""
    check_refused(rig, raw, status)


@pytest.mark.parametrize("raw, status", [
    case(head(line=b"GET /" + b"a" * 70000 + b" HTTP/1.1"), 414, "request-line"),
    case(head(b"X-Big: " + b"a" * 70000, line=GET), 431, "one-huge-field"),
    case(head(*(b"X-F%d: %s" % (i, b"a" * 1000) for i in range(70)), line=GET), 431,
         "many-fields"),
    case(head(b"Content-Length: %d" % (2 * MAX_BODY,)), 413, "content-length-body"),
    case(head(CHUNKED) + b"%x\r\n%s\r\n0\r\n\r\n" % (MAX_BODY + 500, b"a" * (MAX_BODY + 500)),
         413, "chunked-body"),
])
def test_limits(rig, raw, status):
    """A request line over 64 KiB is 414, a head over it 431, a body over --max-body-size 413."""
    check_refused(rig, raw, status)


@dataclass(frozen=True)
class Forwarded:
    """
    A request the worker must receive: C{headers} are pairs that must each
    be the only value of their header.
    """

    method: bytes
    target: bytes
    body: bytes = b""
    headers: tuple[tuple[bytes, bytes], ...] = ()

    def check(self, received: Request) -> None:
        assert (received.method, received.target, received.body) == (
            self.method, self.target, self.body), received
        assert received.values(b"transfer-encoding") == [], received
        # A body, or a method that has one, is framed by a length; a
        # bodiless GET is sent without one.
        framed = bool(self.body) or self.method in (b"POST", b"PUT")
        length = [b"%d" % (len(self.body),)] if framed else []
        assert received.values(b"content-length") == length, received
        assert [(name, received.values(name)) for name, _ in self.headers] == [
            (name, [value]) for name, value in self.headers
        ], received


@pytest.mark.parametrize("raw, expected", [
    pytest.param(b"GET /plain?x=1 HTTP/1.1\r\nHost: h\r\n\r\n", [Forwarded(
        b"GET", b"/plain?x=1", headers=((b"Host", b"h"), (b"X-Forwarded-Host", b"h"),
                                        (b"X-Forwarded-For", b"127.0.0.1")))],
        id="plain-get"),
    pytest.param(head(b"Content-Length: 5") + b"hello", [Forwarded(b"POST", b"/", b"hello")],
                 id="post-content-length"),
    pytest.param(head(CHUNKED) + b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
                 [Forwarded(b"POST", b"/", b"hello world")], id="post-chunked"),
    pytest.param(head(CHUNKED) + b"5;name=value\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n",
                 [Forwarded(b"POST", b"/", b"hello")], id="chunk-extension-and-trailer"),
    pytest.param(head(b"TRANSFER-ENCODING: CHUNKED") + b"5\r\nhello\r\n0\r\n\r\n",
                 [Forwarded(b"POST", b"/", b"hello")], id="upper-case-te"),
    pytest.param(head(b"Content-Length:  5 ") + b"hello", [Forwarded(b"POST", b"/", b"hello")],
                 id="content-length-ows"),
    pytest.param(head(line=b"GET http://other.example/x?q=1 HTTP/1.1"), [Forwarded(
        b"GET", b"/x?q=1", headers=((b"Host", b"other.example"),
                                    (b"X-Forwarded-Host", b"other.example")))],
        id="absolute-form"),
    pytest.param(head(b"Content-Length: 3", line=b"PUT /one HTTP/1.1") + b"abc"
                 + head(line=b"GET /two HTTP/1.1"),
                 [Forwarded(b"PUT", b"/one", b"abc"), Forwarded(b"GET", b"/two")],
                 id="pipelined"),
    pytest.param(b"GET /old HTTP/1.0\r\n\r\n", [Forwarded(b"GET", b"/old")],
                 id="http-1.0-without-host"),
    pytest.param(b"\r\n" + head(line=b"GET /lead HTTP/1.1"), [Forwarded(b"GET", b"/lead")],
                 id="leading-empty-line"),
    pytest.param(b"\r\n\r\n" + head(line=b"GET /lead HTTP/1.1"), [Forwarded(b"GET", b"/lead")],
                 id="leading-empty-lines"),
    # RFC 9112 section 2.2: line ends before a request line are skipped; the
    # worker gets the request re-framed, so a lone CR there smuggles nothing.
    pytest.param(b"\r" + head(line=b"GET /lead HTTP/1.1"), [Forwarded(b"GET", b"/lead")],
                 id="leading-bare-cr"),
    pytest.param(head(b"X-Text: caf\xe9 \x80\xff", line=GET),
                 [Forwarded(b"GET", b"/", headers=((b"X-Text", b"caf\xe9 \x80\xff"),))],
                 id="obs-text-in-value"),
])
def test_accepted(rig, raw, expected):
    """A valid request is answered 200 and reaches the worker exactly, its body de-chunked with a Content-Length, in order."""
    mark = rig.mark()
    answer = exchange(rig.hub.consumer_port, raw, count=len(expected))
    assert answer.statuses == [200] * len(expected), answer
    assert [response.body for response in answer.responses] == [b"ok"] * len(expected)
    received = rig.forwarded_since(mark)
    assert len(received) == len(expected), received
    for forwarded, request in zip(expected, received, strict=True):
        forwarded.check(request)


# The property: valid requests, mutated a few bytes at a time.

#: Bytes the mutations write: separators, line ends, controls, digits and
#: hex digits, and what starts a sign, a token or obs-text.
HOSTILE = b" \t\r\n:;,\x00\x7f\x0b\x0c0159aAfFxX-+=/\"\x80\xff"
HOSTILE_BYTES = [HOSTILE[i:i + 1] for i in range(len(HOSTILE))]

_examples = itertools.count()


@st.composite
def valid_requests(draw) -> tuple[bytes, int]:
    """
    A valid HTTP/1.1 request, its body framed by Content-Length or
    chunked (a GET perhaps by neither, without a body), and where its
    framing starts: the framing header's line.
    """
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT"]))
    path = draw(st.text("abcxyz0129/._-~", max_size=10)).encode()
    query = draw(st.one_of(st.just(""), st.text("ab=&12", max_size=6).map("?{}".format)))
    fields = draw(st.lists(st.tuples(
        st.sampled_from([b"Accept", b"User-Agent", b"X-Token", b"Cookie", b"Via"]),
        st.binary(max_size=12).map(lambda value: bytes(b % 94 + 33 for b in value)),
    ), max_size=3))
    lines = [b"%s /%s%s HTTP/1.1" % (method, path, query.encode()), b"Host: h"]
    lines += [name + b": " + value for name, value in fields]
    framing = len(b"".join(line + b"\r\n" for line in lines))
    body = draw(st.binary(max_size=40))
    how = draw(st.sampled_from(["length", "chunked"] + (["none"] if method == b"GET" else [])))
    if how == "length":
        lines.append(b"Content-Length: %d" % (len(body),))
        framed = body
    elif how == "chunked":
        lines.append(CHUNKED)
        sizes = draw(st.lists(st.integers(1, 16), max_size=6))
        chunks, rest = [], body
        for size in sizes:
            chunks.append(rest[:size])
            rest = rest[size:]
        chunks = [chunk for chunk in chunks + [rest] if chunk]
        framed = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks) + b"0\r\n\r\n"
    else:
        framed = b""
    return b"".join(line + b"\r\n" for line in lines) + b"\r\n" + framed, framing


@st.composite
def mutated_requests(draw) -> bytes:
    """
    A valid request with one to four bytes replaced, inserted or deleted,
    each anywhere or, as often, in its framing (header and body).
    """
    data, framing = draw(valid_requests())
    # Positions spread evenly (Hypothesis' integers favour the ends).
    spread = draw(st.randoms(use_true_random=False))
    for _ in range(draw(st.integers(1, 4))):
        at = spread.randrange(min(framing, len(data) - 1) if draw(st.booleans()) else 0, len(data))
        byte = draw(st.sampled_from(HOSTILE_BYTES))
        kind = draw(st.sampled_from(["replace", "insert", "delete"]))
        if kind == "replace":
            data = data[:at] + byte + data[at + 1:]
        elif kind == "insert":
            data = data[:at] + byte + data[at:]
        else:
            data = data[:at] + data[at + 1:]
    return data


def strict_reading(data: bytes) -> tuple[list[Request], str]:
    """
    How h11, as a server, reads C{data}: the requests it completes, and
    how it stops: ``"refused"``, ``"incomplete"`` (it waits for more) or
    ``"closed"`` (a request closed the connection).

    h11 is given the two leniencies that RFC 9112 allows a server and
    llhttp takes: line ends before a request line are skipped (section
    2.2), and a request line's parts may be separated by several spaces
    (section 3).  Neither can smuggle anything through the hub, which
    writes every request line and head afresh.
    """
    requests: list[Request] = []
    while True:
        data = data.lstrip(b"\r\n")
        line, end, rest = data.partition(b"\r\n")
        connection = h11.Connection(h11.SERVER)
        connection.receive_data(re.sub(b" +", b" ", line) + end + rest)
        current, body = None, []
        while True:
            try:
                received = connection.next_event()
            except h11.RemoteProtocolError:
                return requests, "refused"
            if received is h11.NEED_DATA:
                return requests, "incomplete"
            if isinstance(received, h11.Request):
                current = received
            elif isinstance(received, h11.Data):
                body.append(bytes(received.data))
            elif isinstance(received, h11.EndOfMessage):
                break
        requests.append(Request(bytes(current.method), bytes(current.target), (),
                                b"".join(body)))
        connection.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
        connection.send(h11.EndOfMessage())
        if connection.their_state is not h11.DONE or connection.our_state is not h11.DONE:
            return requests, "closed"
        data = bytes(connection.trailing_data[0])


def same(request: Request, reference: Request) -> bool:
    return (request.method, request.target, request.body) == (
        reference.method, reference.target, reference.body)


@settings(max_examples=3000, deadline=None, derandomize=True, database=None)
@given(mutated=mutated_requests())
def test_mutated_requests_are_refused_or_framed_as_a_strict_parser_reads_them(rig, mutated):
    """
    A mutated request, with GET /next-n pipelined behind it, is refused
    (one error status, then close, nothing more forwarded) or forwarded
    exactly as h11 reads it: the same requests, the same bodies, in the
    same order, and never one that h11 does not see.
    """
    target = b"/next-%d" % (next(_examples),)
    following = b"GET %s HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n" % (target,)
    data = mutated + following
    reference, ending = strict_reading(data)
    mark = rig.mark()
    # Where h11 waits for more bytes the hub should too; no event marks a
    # hub that waits, so a bounded 0.5 s shows that it does nothing.
    answer = exchange(rig.hub.consumer_port, data,
                      timeout=0.5 if ending == "incomplete" else WAIT)
    forwarded = rig.forwarded_since(mark)

    assert answer.error is None, answer
    statuses = answer.statuses
    assert statuses[:len(forwarded)] == [200] * len(forwarded), (statuses, forwarded)
    refusals = statuses[len(forwarded):]
    assert len(refusals) <= 1 and all(status >= 400 for status in refusals), statuses
    assert not refusals or answer.closed, "a refusal left the connection open"
    assert len(forwarded) <= len(reference), (forwarded, reference, ending)
    for received, expected in zip(forwarded, reference, strict=False):
        assert same(received, expected), (received, expected)
    if len(forwarded) < len(reference):
        # Stricter than h11 is allowed, but only by refusing.
        assert refusals, (statuses, forwarded, reference)
    elif ending == "closed":
        assert answer.closed, "the hub waits for bytes that h11 read to the end"
    else:
        assert statuses or not answer.closed, "the hub closed the connection without an answer"
    event(f"h11: {ending}; hub forwarded {len(forwarded)} of {len(reference)}, "
          f"answered {statuses}")
