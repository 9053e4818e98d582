"""
A pool: one FIFO queue of jobs and the worker slots that take from it.

The pool knows jobs and slots only by what it needs of them (L{Queued},
L{Attached}); what a job or a slot does is theirs.
"""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar

from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from pothead.hub.limits import Limits
from pothead.hub.metrics import PoolMetrics
from pothead.hub.tally import Tally


class Queued(Protocol):
    """
    What a pool needs of an item in its queue.
    """

    #: When it must leave the queue.
    queued_until: float

    #: Whether it was put back at the head of the queue (L{Pool.put_first}).
    requeued: bool

    #: When it first joined the queue.
    queued_at: float

    def waited_too_long(self) -> None:
        """It was taken out of the queue at its C{queued_until}."""


class Attached(Protocol):
    """
    What a pool needs of a slot attached to it.
    """

    def detach(self) -> None:
        """Close the slot's connection gently: the hub is stopping."""


class Watching(Protocol):
    """
    What a pool needs of a slot that waits, out of line, for a job to
    be queued (L{Pool.watching}).
    """

    def job_queued(self) -> None:
        """A job was queued, with no slot in line to take it."""


Q = TypeVar("Q", bound=Queued)


class Line(DeferredQueue, Generic[Q]):
    """
    A L{DeferredQueue} whose items may also cut in at the head, leave from
    the middle, and be taken out when due.

    L{DeferredQueue} pairs items with waiting getters, both in FIFO order,
    through its C{pending} and C{waiting} lists; this subclass is the one
    place that touches them (tests/test_pool.py pins what it relies on).
    """

    def __len__(self) -> int:
        """How many items wait for a getter."""
        return len(self.pending)

    @property
    def first(self) -> Q:
        """The item at the head of the line; there must be one."""
        return self.pending[0]

    @property
    def getters(self) -> int:
        """How many getters wait for an item."""
        return len(self.waiting)

    def put_first(self, item: Q) -> bool:
        """
        Hand C{item} to the getter that waited longest, or else queue it
        ahead of every other item.

        :return: whether it was queued (no getter took it).
        """
        if self.waiting:
            self.waiting.pop(0).callback(item)
            return False
        self.pending.insert(0, item)
        return True

    def is_last(self, item: Q) -> bool:
        """Whether C{item} waits at the tail (it was not handed to a getter)."""
        return bool(self.pending) and self.pending[-1] is item

    def discard(self, item: Q) -> bool:
        """
        Take C{item} out of the line.

        :return: whether it was still there.
        """
        try:
            self.pending.remove(item)
        except ValueError:
            return False
        return True

    def take_due(self, now: float) -> tuple[list[Q], float | None]:
        """
        Take out the items whose C{queued_until} is past at C{now}.

        Items that joined at the tail are in deadline order (every job gets
        the same timeouts), so only a run of them at the front can be due;
        the requeued ones ahead of them are few and checked one by one.

        :return: the due items, and the earliest deadline left that may
            come first (L{None} when nothing waits).
        """
        pending = self.pending
        first = 0  # the first item that joined at the tail
        while first < len(pending) and pending[first].requeued:
            first += 1
        last = first
        while last < len(pending) and pending[last].queued_until <= now:
            last += 1
        due = pending[first:last]
        del pending[first:last]
        due_at_head = [item for item in pending[:first] if item.queued_until <= now]
        for item in due_at_head:
            pending.remove(item)
        # The rest of the head, and the earliest of those that joined at
        # the tail.
        upcoming = pending[: first - len(due_at_head) + 1]
        earliest = min((item.queued_until for item in upcoming), default=None)
        return due_at_head + due, earliest


class Pool(Generic[Q]):
    """
    Pair queued jobs with idle slots, oldest with longest-idle, and send
    away the jobs that waited too long.

    A L{Line} does the pairing: jobs are the items put, idle slots the
    pending getters.  One timer per pool, not one per job, watches the
    line: only its first jobs can be due (L{Line.take_due}).

    :ivar name: the pool's name, as workers name it when they attach.
    :ivar slots: the slots attached to this pool now.
    :ivar watching: slots out of line that want to hear when a job is
        queued: a slot held by its worker with nothing to bid for it
        (L{pothead.bidding}).  Each is told once, and leaves the set.
    :ivar turned_away: requests answered 503 because the queue was full.
    :ivar metrics: what the pool counts of its jobs.
    :ivar limits: the limits its jobs have: the hub's, but for those the
        pool sets itself (C{--pool NAME:max-queue=N}...).
    """

    def __init__(self, name: str, clock: IReactorTime, limits: Limits | None = None) -> None:
        self.name = name
        self.limits = limits or Limits()
        self.slots: set[Attached] = set()
        self.watching: set[Watching] = set()
        self._line: Line[Q] = Line()
        self._clock = clock
        self._expiry: IDelayedCall | None = None
        self.turned_away = Tally(
            clock, f"pool {name}: queue full, answered {{count}} requests 503 (last: {{detail}})"
        )
        self.metrics = PoolMetrics()

    @property
    def queued(self) -> int:
        """How many jobs wait for a slot."""
        return len(self._line)

    @property
    def idle(self) -> int:
        """How many slots wait for a job."""
        return self._line.getters

    def head_waited(self) -> float | None:
        """
        Seconds the job at the head of the line has waited since it first
        joined, or L{None} when none waits: what the pool bids for a slot
        offered to several hubs (L{pothead.bidding}).
        """
        if not len(self._line):
            return None
        return self._clock.seconds() - self._line.first.queued_at

    def put(self, job: Q) -> None:
        """
        Queue C{job} behind every job already waiting, until its
        C{queued_until}.
        """
        self._line.put(job)
        if self._line.is_last(job):
            self._watch(job.queued_until)
            self._tell_watching()
            self._note_depth()

    def put_first(self, job: Q) -> None:
        """
        Queue C{job} ahead of every other: it was taken once and handed back
        unprocessed, so it keeps its place in line.
        """
        if self._line.put_first(job):
            self._watch(job.queued_until)
            self._tell_watching()
            self._note_depth()

    def _note_depth(self) -> None:
        metrics = self.metrics
        if len(self._line) > metrics.queued_peak:
            metrics.queued_peak = len(self._line)

    def _tell_watching(self) -> None:
        # Emptied in place, never replaced: a slot of several pools
        # (L{pothead.hub.pool_group}) holds this very set.
        if self.watching:
            watching = list(self.watching)
            self.watching.clear()
            for slot in watching:
                slot.job_queued()

    def get(self) -> Deferred[Q]:
        """
        The next job, when there is one.  Cancel the L{Deferred} to leave
        the line.
        """
        taken = self._line.get()
        self._unwatch_if_empty()
        return taken

    def discard(self, job: Q) -> bool:
        """
        Take a queued C{job} out of the line.

        :return: whether it was still queued.
        """
        if not self._line.discard(job):
            return False
        self._unwatch_if_empty()
        return True

    def _unwatch_if_empty(self) -> None:
        if not len(self._line) and self._expiry is not None:
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
        due, earliest = self._line.take_due(self._clock.seconds())
        if earliest is not None:
            self._watch(earliest)
        for job in due:
            job.waited_too_long()
