"""
A request body read by the app as it arrives: a worker's C{wsgi.input}.

The hub has buffered a consumer's whole body before it sends the job, and
sends it at the speed of the loopback or the network.  Were the worker to
store it again before calling the app, as twisted.web does, every large
upload would be written to the worker's disk and read back, and the app
would wait for the last byte before it read the first: a 1 GB upload took
two to four seconds more that way on the benchmark machine, most of it
the kernel throttling the temporary file's writes.  A L{BodyPipe} instead
holds at most about L{HIGH_WATER} bytes: the reactor puts what arrives in,
the app's thread takes it out, and the connection stops being read while
the app is behind.
"""

from __future__ import annotations

import sys
import threading
from typing import Callable, Iterator

from twisted.internet.error import ConnectionLost

#: Above this many unread bytes the connection is paused ...
HIGH_WATER = 1024 * 1024
#: ... and it is read again once the app has brought them down to this.
LOW_WATER = 256 * 1024


class BodyPipe:
    """
    A request body, written by the reactor thread and read, as a file, by
    the app's thread; reads block until there is something to read.

    :param pause: called in the reactor thread when too much is unread.
    :param resume: called when the app has caught up, in the app's thread
        (or the reactor's, from L{fail} or L{close}); it must hand the work
        to the reactor thread.
    """

    def __init__(self, pause: Callable[[], None], resume: Callable[[], None]) -> None:
        self._pause = pause
        self._resume = resume
        self._ready = threading.Condition()
        self._unread = bytearray()
        self._read = 0
        self._ended = False
        self._error: Exception | None = None
        self._paused = False
        self._dropping = False

    # The reactor thread's side.

    def write(self, data: bytes) -> None:
        """
        A piece of the body arrived.
        """
        if self._dropping or not data:
            return
        with self._ready:
            self._unread += data
            self._ready.notify()
            pause = not self._paused and len(self._unread) > HIGH_WATER
            self._paused = self._paused or pause
        if pause:
            self._pause()

    def end(self) -> None:
        """
        The body is complete: reads past it return C{b""}.
        """
        with self._ready:
            self._ended = True
            self._ready.notify_all()

    def fail(self, error: Exception | None = None) -> None:
        """
        The rest of the body will never be read (the connection was lost,
        or is closing): a read that needs more than has arrived raises
        C{error}, and what still arrives is dropped (see L{_drop_the_rest}).
        """
        self._drop_the_rest(error=error or ConnectionLost("the hub went away before the body was complete"))

    def close(self) -> None:
        """
        Nobody will read the rest: drop what is unread too, so that the
        body can be read to its end and the connection serve its next
        request.
        """
        self._drop_the_rest(unread_too=True)

    def _drop_the_rest(self, error: Exception | None = None, unread_too: bool = False) -> None:
        """
        Drop what still arrives, and let the connection be read again if
        it was paused (a TLS close, too, waits to read the peer's
        close_notify behind the rest of the body).
        """
        with self._ready:
            self._dropping = True
            if error is not None:
                self._error = error
            if unread_too:
                self._unread = bytearray()
                self._ended = True
            resume, self._paused = self._paused, False
            self._ready.notify_all()
        if resume:
            self._resume()

    # The app's side: a readable file, as PEP 3333 asks of wsgi.input.

    def read(self, size: int | None = -1) -> bytes:
        """
        Read C{size} bytes, fewer only at the end of the body, as a file
        reads (apps read C{CONTENT_LENGTH} bytes in one call); all of the
        rest if C{size} is negative or L{None}.
        """
        wanted = sys.maxsize if size is None or size < 0 else size
        pieces = []
        with self._ready:
            # Taken as it arrives, not once all is here: the reactor is
            # told to read on only as the app takes what it holds.
            while wanted > 0:
                self._wait_for_data()
                if not self._unread:
                    break
                pieces.append(self._take(wanted))
                wanted -= len(pieces[-1])
        return b"".join(pieces)

    def readline(self, size: int | None = -1) -> bytes:
        """
        Read up to and including the next newline, or C{size} bytes,
        whichever comes first.
        """
        limit = None if size is None or size < 0 else size
        pieces = []
        got = 0
        with self._ready:
            while limit is None or got < limit:
                self._wait_for_data()
                if not self._unread:
                    break
                want = len(self._unread) if limit is None else min(len(self._unread), limit - got)
                end = self._unread.find(b"\n", 0, want) + 1
                pieces.append(self._take(end or want))
                got += len(pieces[-1])
                if end:
                    break
        return b"".join(pieces)

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        """
        Read lines until the end, or until they add up to C{hint} bytes.
        """
        lines: list[bytes] = []
        total = 0
        for line in self:
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        while True:
            line = self.readline()
            if not line:
                return
            yield line

    def tell(self) -> int:
        """
        The position of the next read, as a file's C{tell()} says it: how
        many bytes of the body the app has read.
        """
        with self._ready:
            return self._read

    def _wait_for_data(self) -> None:
        """
        Wait, holding the condition, until something is unread or the body
        ended; raise the body's failure if it fails first.
        """
        while not (self._unread or self._ended):
            if self._error is not None:
                raise self._error
            self._ready.wait()

    def _take(self, size: int) -> bytes:
        data = bytes(self._unread[:size])
        del self._unread[:size]
        self._read += len(data)
        if self._paused and len(self._unread) <= LOW_WATER:
            self._paused = False
            self._resume()
        return data
