"""
A pool: one FIFO queue of jobs and the worker slots that take from it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from pothead.tally import Tally

if TYPE_CHECKING:
    from pothead.job import Job
    from pothead.slot import Slot


class Pool:
    """
    Pair queued jobs with idle slots, oldest with longest-idle, and send
    away the jobs that waited too long.

    A L{DeferredQueue} does the pairing: jobs are the items put, idle
    slots the pending getters, both kept in FIFO order.

    One timer per pool, not one per job, watches the line: a job joins at
    the tail with a deadline no earlier than any job ahead of it (every job
    gets the same timeouts), so only the first ones can be due.  Jobs put
    back at the head of the line (L{put_first}) break that order; they are
    few, always ahead of the others, and checked one by one.

    :ivar name: the pool's name, as workers name it when they attach.
    :ivar slots: the slots attached to this pool now.
    """

    def __init__(self, name: str, clock: IReactorTime) -> None:
        self.name = name
        self.slots: set[Slot] = set()
        self._queue: DeferredQueue[Job] = DeferredQueue()
        self._clock = clock
        self._expiry: IDelayedCall | None = None
        #: Requests answered 503 because the queue was full.
        self.turned_away = Tally(
            clock, f"pool {name}: queue full, answered {{count}} requests 503 (last: {{detail}})"
        )

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
        Queue C{job} behind every job already waiting, until its
        C{queued_until}.
        """
        self._queue.put(job)
        if self._queue.pending and self._queue.pending[-1] is job:
            self._watch(job.queued_until)

    def put_first(self, job: Job) -> None:
        """
        Queue C{job} ahead of every other: it was taken once and handed back
        unprocessed, so it keeps its place in line.
        """
        if self._queue.waiting:
            self._queue.waiting.pop(0).callback(job)
            return
        self._queue.pending.insert(0, job)
        self._watch(job.queued_until)

    def get(self) -> Deferred[Job]:
        """
        The next job, when there is one.  Cancel the L{Deferred} to leave
        the line.
        """
        taken = self._queue.get()
        self._unwatch_if_empty()
        return taken

    def discard(self, job: Job) -> bool:
        """
        Take a queued C{job} out of the line.

        :return: whether it was still queued.
        """
        try:
            self._queue.pending.remove(job)
        except ValueError:
            return False
        self._unwatch_if_empty()
        return True

    def _unwatch_if_empty(self) -> None:
        if not self._queue.pending and self._expiry is not None:
            if self._expiry.active():
                self._expiry.cancel()
            self._expiry = None

    def _watch(self, deadline: float) -> None:
        expiry = self._expiry
        if expiry is not None and expiry.active():
            if deadline < expiry.getTime():
                expiry.reset(max(0.0, deadline - self._clock.seconds()))
            return
        self._expiry = self._clock.callLater(
            max(0.0, deadline - self._clock.seconds()), self._expire
        )

    def _expire(self) -> None:
        self._expiry = None
        now = self._clock.seconds()
        pending = self._queue.pending
        first = 0  # the first job that joined at the tail
        while first < len(pending) and pending[first].requeued:
            first += 1
        last = first
        while last < len(pending) and pending[last].queued_until <= now:
            last += 1
        due = pending[first:last]
        del pending[first:last]
        due_at_head = [job for job in pending[:first] if job.queued_until <= now]
        for job in due_at_head:
            pending.remove(job)
        # The rest of the head, and the earliest of those that joined at
        # the tail.
        upcoming = pending[: first - len(due_at_head) + 1]
        if upcoming:
            self._watch(min(job.queued_until for job in upcoming))
        for job in due_at_head + due:
            job.waited_too_long()
