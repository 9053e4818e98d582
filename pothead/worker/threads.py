"""
The threads a worker calls its app in.

A worker has a fixed number of slots and as many threads; every request
is handed to a thread by the reactor, so the hand-over is on the path of
every request.  Twisted's L{ThreadPool} grows and shrinks, carries a
logging context and coordinates its threads through a team of workers:
about 21 us of CPU per call on this project's benchmark machine, against
8 us here, where the threads just take calls from one C{SimpleQueue}
(C code, one lock) in the order they were made.
"""

from __future__ import annotations

from queue import SimpleQueue
from threading import Thread
from typing import Callable

from twisted.logger import Logger

_log = Logger()

#: What tells a thread to end.
_STOP = None


class AppThreads:
    """
    C{count} threads that run the calls given to L{callInThread}, first
    come first served; what C{twisted.web.wsgi} needs of a thread pool.
    """

    def __init__(self, count: int, name: str) -> None:
        self.count = count
        self._name = name
        self._calls: SimpleQueue = SimpleQueue()
        self._threads: list[Thread] = []

    def start(self) -> None:
        """
        Start the threads.
        """
        self._threads = [
            Thread(target=self._run, name=f"{self._name}-{index}", daemon=True)
            for index in range(self.count)
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """
        Let every thread finish the calls made before, then end; blocks
        until they have.
        """
        for _ in self._threads:
            self._calls.put(_STOP)
        for thread in self._threads:
            thread.join()
        self._threads = []

    def callInThread(self, f: Callable[..., object], *args: object, **kwargs: object) -> None:
        """
        Call C{f(*args, **kwargs)} in one of the threads, once one is free.
        """
        self._calls.put((f, args, kwargs))

    def _run(self) -> None:
        while (call := self._calls.get()) is not _STOP:
            f, args, kwargs = call
            try:
                f(*args, **kwargs)
            except BaseException:
                _log.failure("call in an app thread failed: {f!r}", f=f)
