"""
Events that come in floods, logged as counts: at most one line per
interval, however many happen.

At a limit (descriptors, connections) the same event repeats for every
connection that arrives; a line each would fill the log, and cost the
hub the time it needs to recover.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

_log = Logger()


class Tally:
    """
    Count one kind of event; log the count at most once per C{interval}.

    The first event after a quiet interval is logged at once; the ones
    that follow it within the interval are counted and logged together
    when it ends.

    :ivar total: every event counted so far.
    """

    def __init__(self, clock: IReactorTime, message: str, interval: float = 1.0) -> None:
        """
        :param message: a log format with C{{count}} and, if it likes,
            C{{detail}} (what the last event said).
        """
        self.total = 0
        self._clock = clock
        self._message = message
        self._interval = interval
        self._pending = 0
        self._detail = ""
        self._flush = None

    def count(self, detail: str = "") -> None:
        """
        One more event; C{detail} says what it was.
        """
        self.total += 1
        self._pending += 1
        self._detail = detail
        if self._flush is None:
            self._write()

    def _write(self) -> None:
        if self._pending:
            _log.warn(self._message, count=self._pending, detail=self._detail)
            self._pending = 0
            self._flush = self._clock.callLater(self._interval, self._write)
        else:
            self._flush = None
