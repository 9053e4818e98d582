"""
A pool: one FIFO queue of jobs and the worker slots that take from it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred, DeferredQueue

if TYPE_CHECKING:
    from pothead.job import Job
    from pothead.slot import Slot


class Pool:
    """
    Pair queued jobs with idle slots, oldest with longest-idle.

    A L{DeferredQueue} does exactly that: jobs are the items put, idle
    slots the pending getters, both kept in FIFO order.

    :ivar name: the pool's name, as workers name it when they attach.
    :ivar slots: the slots attached to this pool now.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.slots: set[Slot] = set()
        self._queue: DeferredQueue[Job] = DeferredQueue()

    @property
    def queued(self) -> int:
        """How many jobs wait for a slot."""
        return len(self._queue.pending)

    @property
    def idle(self) -> int:
        """How many slots wait for a job."""
        return len(self._queue.waiting)

    def put(self, job: Job) -> None:
        """
        Queue C{job} behind every job already waiting.
        """
        self._queue.put(job)

    def put_first(self, job: Job) -> None:
        """
        Queue C{job} ahead of every other: it was taken once and handed back
        unprocessed, so it keeps its place in line.
        """
        if self._queue.waiting:
            self._queue.waiting.pop(0).callback(job)
        else:
            self._queue.pending.insert(0, job)

    def get(self) -> Deferred[Job]:
        """
        The next job, when there is one.  Cancel the L{Deferred} to leave
        the line.
        """
        return self._queue.get()

    def discard(self, job: Job) -> bool:
        """
        Take a queued C{job} out of the line.

        :return: whether it was still queued.
        """
        try:
            self._queue.pending.remove(job)
        except ValueError:
            return False
        return True
