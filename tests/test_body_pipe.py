"""
A worker's request body as the app reads it while it arrives
(pothead/body_pipe.py): file reads that wait for data, a bounded buffer
that pauses and resumes the connection, and a body that fails or is
dropped.
"""

from __future__ import annotations

import threading

import pytest
from twisted.internet.error import ConnectionLost

from pothead.worker.body_pipe import HIGH_WATER, LOW_WATER, BodyPipe

pytestmark = pytest.mark.unit

#: A bound on every wait for another thread in these tests.
WAIT = 10.0


class Flow:
    """
    What a pipe told the connection: how often it paused and resumed it.
    """

    def __init__(self) -> None:
        self.pauses = 0
        self.resumes = 0
        self.resumed = threading.Event()

    def pause(self) -> None:
        self.pauses += 1
        self.resumed.clear()

    def resume(self) -> None:
        self.resumes += 1
        self.resumed.set()

    def pipe(self) -> BodyPipe:
        return BodyPipe(self.pause, self.resume)


def in_thread(f):
    """
    Run C{f} in a thread; return a function that waits (bounded) for its
    result or exception.
    """
    outcome: list = []

    def run() -> None:
        try:
            outcome.append((True, f()))
        except Exception as error:  # handed to the test's thread
            outcome.append((False, error))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def result():
        thread.join(WAIT)
        assert outcome, "the reading thread is still blocked"
        ok, value = outcome[0]
        if not ok:
            raise value
        return value

    result.done = lambda seconds: (thread.join(seconds), bool(outcome))[1]
    return result


def test_reads_in_pieces_then_the_end():
    pipe = Flow().pipe()
    pipe.write(b"hello ")
    pipe.write(b"world")
    assert pipe.read(3) == b"hel"
    assert pipe.tell() == 3  # a file's position: what has been read, not what arrived
    assert pipe.read(8) == b"lo world"
    pipe.end()
    assert pipe.read(5) == b"" and pipe.read() == b""
    assert pipe.tell() == 11


def test_read_waits_for_all_it_asked_for():
    """
    read(n) returns n bytes, as a file's read does, however the body
    arrives: apps read CONTENT_LENGTH bytes in one call.
    """
    pipe = Flow().pipe()
    reading = in_thread(lambda: pipe.read(4))
    pipe.write(b"ab")
    # No event marks a read still blocked: a bounded 50 ms shows that it
    # did not return with the two bytes it has.
    assert not reading.done(0.05)
    pipe.write(b"cdef")
    assert reading() == b"abcd"
    rest = in_thread(lambda: pipe.read(10))
    pipe.write(b"gh")
    pipe.end()
    assert rest() == b"efgh"


def test_lines():
    pipe = Flow().pipe()
    for piece in (b"one\ntw", b"o\n", b"three", b"\nfour"):
        pipe.write(piece)
    pipe.end()
    assert pipe.readline() == b"one\n"
    assert pipe.readline(2) == b"tw" and pipe.readline() == b"o\n"
    assert list(pipe) == [b"three\n", b"four"]
    assert pipe.readline() == b""


def test_readlines_with_hint():
    pipe = Flow().pipe()
    pipe.write(b"a\nbb\nccc\n")
    pipe.end()
    assert pipe.readlines(3) == [b"a\n", b"bb\n"]
    assert pipe.readlines() == [b"ccc\n"]


def test_pauses_above_high_water_and_resumes_at_low_water():
    flow = Flow()
    pipe = flow.pipe()
    pipe.write(b"x" * HIGH_WATER)
    assert flow.pauses == 0
    pipe.write(b"x")
    pipe.write(b"x")
    assert flow.pauses == 1
    pipe.read(HIGH_WATER - LOW_WATER)
    assert flow.resumes == 0
    pipe.read(2)
    assert flow.resumes == 1


def test_whole_body_larger_than_the_buffer():
    """
    read() of a body many times the high water mark: what it has read is
    taken out as it goes, so the connection is resumed and the writer,
    which stops while paused, gets to the end.
    """
    flow = Flow()
    pipe = flow.pipe()
    piece = b"y" * 65536
    pieces = 4 * HIGH_WATER // len(piece)
    reading = in_thread(pipe.read)
    for _ in range(pieces):
        assert flow.pauses == flow.resumes or flow.resumed.wait(WAIT)
        pipe.write(piece)
    pipe.end()
    assert len(reading()) == pieces * len(piece)
    assert flow.pauses >= 3 and flow.resumes == flow.pauses


def test_one_read_larger_than_the_buffer():
    """
    read(n) for n past the high water mark takes what arrives as it
    arrives, so the connection is resumed and the whole n is read.
    """
    flow = Flow()
    pipe = flow.pipe()
    size = 3 * HIGH_WATER + 5
    reading = in_thread(lambda: pipe.read(size))
    piece = b"w" * 65536
    written = 0
    while written < size + len(piece):
        assert flow.pauses == flow.resumes or flow.resumed.wait(WAIT)
        pipe.write(piece)
        written += len(piece)
    assert reading() == b"w" * size


def test_long_line_larger_than_the_buffer():
    flow = Flow()
    pipe = flow.pipe()
    reading = in_thread(pipe.readline)
    for _ in range(3):
        assert flow.pauses == flow.resumes or flow.resumed.wait(WAIT)
        pipe.write(b"z" * HIGH_WATER)
    pipe.write(b"\nnext")
    assert reading() == b"z" * 3 * HIGH_WATER + b"\n"


def test_failed_body_fails_a_waiting_read():
    pipe = Flow().pipe()
    pipe.write(b"part")
    reading = in_thread(pipe.read)
    pipe.fail()
    with pytest.raises(ConnectionLost):
        reading()


def test_what_arrived_before_a_failure_is_read():
    pipe = Flow().pipe()
    pipe.write(b"part")
    pipe.fail()
    assert pipe.read(4) == b"part"
    with pytest.raises(ConnectionLost):
        pipe.read(1)


def test_closed_pipe_drops_the_rest_and_resumes_the_connection():
    flow = Flow()
    pipe = flow.pipe()
    pipe.write(b"x" * (HIGH_WATER + 1))
    assert flow.pauses == 1
    pipe.close()
    assert flow.resumes == 1
    pipe.write(b"more")
    assert pipe.read() == b""
    assert pipe.tell() == 0  # dropped, never read: the position is where the app left it


def test_failed_pipe_drops_the_rest_and_resumes_the_connection():
    """
    A body given up (the connection is closing) lets the connection be
    read again, so that it can close.
    """
    flow = Flow()
    pipe = flow.pipe()
    pipe.write(b"x" * (HIGH_WATER + 1))
    pipe.fail()
    assert flow.resumes == 1
    pipe.write(b"more")
    assert len(pipe.read(HIGH_WATER + 1)) == HIGH_WATER + 1
    with pytest.raises(ConnectionLost):
        pipe.read(1)
