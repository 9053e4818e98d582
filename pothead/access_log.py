"""
The hub's access log in a file of its own, written in blocks.

twisted.web opens an access log file line-buffered: one ``write`` system
call per request, which on the hub's per-request path costs about as much
as parsing the request.  Here lines gather in memory and reach the file
when 64 KiB have gathered, a second after the first line not yet written,
or when the hub stops, like nginx's ``access_log ... buffer= flush=``.
"""

from __future__ import annotations

from twisted.internet.interfaces import IDelayedCall, IReactorTime

#: Bytes of log lines held in memory at most before they are written.
BUFFER_BYTES = 64 * 1024

#: Seconds a line may wait in memory at most.
FLUSH_DELAY = 1.0


class BufferedLogFile:
    """
    An append-only text file whose lines reach the disk at most
    C{FLUSH_DELAY} seconds late.

    The file is opened for appending, so ``logrotate``'s ``copytruncate``
    rotates it without the hub's help.
    """

    def __init__(self, path: str, clock: IReactorTime) -> None:
        self._file = open(path, "a", BUFFER_BYTES, encoding="utf-8", newline="\n")
        self._clock = clock
        self._flush_call: IDelayedCall | None = None

    def write(self, line: str) -> None:
        """
        Add C{line} to the file, soon.
        """
        self._file.write(line)
        if self._flush_call is None:
            self._flush_call = self._clock.callLater(FLUSH_DELAY, self.flush)

    def flush(self) -> None:
        """
        Write every line gathered so far to the file now.
        """
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        self._file.flush()

    def close(self) -> None:
        """
        Write what is left and close the file.
        """
        self.flush()
        self._file.close()
