"""
The hub's access log: a line per answered request, to the twistd log or
to a file of its own, written in blocks.

twisted.web opens an access log file line-buffered: one ``write`` system
call per request, which on the hub's per-request path costs about as much
as parsing the request.  Here lines gather in memory and reach the file
when 64 KiB have gathered, a second after the first line not yet written,
or when the hub stops, like nginx's ``access_log ... buffer= flush=``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

if TYPE_CHECKING:
    from pothead.http.server import ServerRequest

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


class AccessLog:
    """
    One line per answered request, in the combined log format twisted.web
    and most log tools read (client address, time, request line, status,
    body bytes sent, referrer and user agent), followed by where the time
    went and where it went: C{queue=SECONDS worker=SECONDS
    worker_name="NAME" pool=NAME} (C{-} where no worker took the job, or
    no pool had it).

    To the twistd log, each line is an event that also carries those
    values as fields (C{client}, C{method}, C{target}, C{status},
    C{bytes}, C{queue_seconds}, C{worker_seconds}, C{worker}, C{pool}), which
    C{--log-format json} writes out for log shippers.

    :param write: called with each line, or L{None} for no log at all.
    :param close: called when the hub stops.
    """

    def __init__(
        self, write: Callable[..., None] | None, close: Callable[[], None] = lambda: None
    ) -> None:
        self._write = write
        self.close = close
        self._second = -1
        self._stamp = ""

    @classmethod
    def open(cls, where: str | None, clock: IReactorTime) -> AccessLog:
        """
        The access log ``--access-log`` asks for: L{None} for the twistd
        log, C{"none"} for none, or a file's path.
        """
        if where == NO_ACCESS_LOG:
            return cls(None)
        if where is None:
            return cls(_to_twistd_log)
        file = BufferedLogFile(where, clock)
        return cls(file.write, file.close)

    def record(
        self, request: ServerRequest, queued: float | None = None,
        worked: float | None = None, worker: str | None = None, pool: str | None = None,
    ) -> None:
        """
        Log C{request}, whose response is complete.

        :param queued: seconds its job waited for a slot, if it was a job.
        :param worked: seconds the worker took, if a worker took it.
        :param worker: the name of that worker.
        :param pool: the pool it went to.
        """
        if self._write is None:
            return
        head = request.head
        referrer = agent = b"-"
        for name, value in head.fields:
            lower = name.lower()
            if lower == b"referer":
                referrer = value
            elif lower == b"user-agent":
                agent = value
        client = getattr(request.client_address(), "host", "-") or "-"
        method = _escape(head.method)
        target = _escape(head.target)
        line = ('"%s" - - %s "%s %s %s" %d %s "%s" "%s" queue=%s worker=%s worker_name=%s'
                ' pool=%s\n') % (
            client,
            self._timestamp(),
            method,
            target,
            head.version.decode("ascii"),
            request.code,
            request.sent or "-",
            _escape(referrer),
            _escape(agent),
            "-" if queued is None else "%.3f" % queued,
            "-" if worked is None else "%.3f" % worked,
            "-" if worker is None else '"%s"' % _escape(worker.encode("utf-8")),
            pool or "-",
        )
        if self._write is _to_twistd_log:
            _to_twistd_log(
                line, client=client, method=method, target=target, status=request.code,
                bytes=request.sent, queue_seconds=queued, worker_seconds=worked, worker=worker,
                pool=pool,
            )
        else:
            self._write(line)

    def _timestamp(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("[%d/%b/%Y:%H:%M:%S +0000]", time.gmtime(now))
        return self._stamp


#: ``--access-log`` value that turns the access log off.
NO_ACCESS_LOG = "none"

_access = Logger(namespace="pothead.access")


def _to_twistd_log(line: str, **fields: object) -> None:
    _access.info("{line}", line=line.rstrip("\n"), **fields)


def _escape(value: bytes) -> str:
    """
    C{value} as printable ASCII, escaped as Python writes bytes, with
    double quotes escaped: a consumer cannot forge log fields.
    """
    text = repr(value)[2:-1]
    return text.replace('"', '\\"') if repr(value)[1] == "'" else text
