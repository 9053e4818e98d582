"""
The app's threads (pothead/threads.py): as many as asked, calls taken
first come first served, a failing call logged without killing its
thread, and stop() waiting for the calls made before it.
"""

from __future__ import annotations

import threading

import pytest
from twisted.logger import globalLogPublisher

from pothead.worker.threads import AppThreads

pytestmark = pytest.mark.unit

#: Seconds any wait in these tests may take before it counts as a hang.
WAIT = 10.0


def test_calls_run_in_as_many_threads_as_asked():
    """
    Four threads run four blocked calls at once, none in the caller's.
    """
    threads = AppThreads(4, name="t")
    threads.start()
    barrier = threading.Barrier(5, timeout=WAIT)
    names: list[str] = []

    def meet() -> None:
        names.append(threading.current_thread().name)
        barrier.wait()

    try:
        for _ in range(4):
            threads.callInThread(meet)
        barrier.wait()
    finally:
        threads.stop()
    assert sorted(names) == ["t-0", "t-1", "t-2", "t-3"]


def test_one_thread_takes_calls_in_order_with_arguments():
    """
    With one thread, calls run in the order they were made, with their
    positional and keyword arguments.
    """
    threads = AppThreads(1, name="t")
    threads.start()
    done: list = []
    for n in range(100):
        threads.callInThread(lambda n, k: done.append((n, k)), n, k=-n)
    threads.stop()
    assert done == [(n, -n) for n in range(100)]


def test_failed_call_is_logged_and_the_thread_goes_on():
    """
    A call that raises is logged with its traceback; the next call still
    runs.
    """
    events: list = []
    globalLogPublisher.addObserver(events.append)
    threads = AppThreads(1, name="t")
    threads.start()
    ran = threading.Event()
    try:
        threads.callInThread(lambda: 1 / 0)
        threads.callInThread(ran.set)
        assert ran.wait(WAIT)
    finally:
        threads.stop()
        globalLogPublisher.removeObserver(events.append)
    failures = [e for e in events if "log_failure" in e]
    assert len(failures) == 1
    assert failures[0]["log_failure"].check(ZeroDivisionError)


def test_stop_finishes_earlier_calls_then_ends_every_thread():
    """
    stop() returns once every call made before it has run and every
    thread has ended; the threads can be started again.
    """
    threads = AppThreads(2, name="t")
    threads.start()
    release = threading.Event()
    finished: list[int] = []

    def slow(n: int) -> None:
        release.wait(WAIT)
        finished.append(n)

    for n in range(4):
        threads.callInThread(slow, n)
    started = threads._threads[:]
    release.set()
    threads.stop()
    assert sorted(finished) == [0, 1, 2, 3]
    assert not any(thread.is_alive() for thread in started)
    threads.start()
    again = threading.Event()
    threads.callInThread(again.set)
    assert again.wait(WAIT)
    threads.stop()
