"""
Several pools one slot serves: a worker that joins C{--pool a --pool b}
offers each of its slots to both lines, and the slot takes the oldest job
across them.

A slot asks its pool for the next job (L{Pool.get}) and never knows there
is more than one: a L{PoolGroup} answers in the pools' stead.  With jobs
waiting it takes the one that arrived first, from whichever line; with
none, it waits in every line at once, and the first job handed to it ends
its wait in the others before anything else can run (the reactor runs one
thing at a time, and a line hands a job over by calling back at once), so
a slot never holds two jobs.
"""

from __future__ import annotations

from typing import Generic, Iterator

from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure

from pothead.hub.pool import Pool, Q


class _InEvery:
    """
    A set that is every pool's set at once: adding or discarding adds to,
    or discards from, each of them.
    """

    def __init__(self, sets: list[set]) -> None:
        self._sets = sets

    def add(self, item: object) -> None:
        for members in self._sets:
            members.add(item)

    def discard(self, item: object) -> None:
        for members in self._sets:
            members.discard(item)

    def __contains__(self, item: object) -> bool:
        return any(item in members for members in self._sets)

    def __iter__(self) -> Iterator:
        return iter(set().union(*self._sets))

    def __len__(self) -> int:
        return len(set().union(*self._sets))


class PoolGroup(Generic[Q]):
    """
    Pools that one slot takes jobs from, as one pool to that slot.

    :ivar pools: the pools, in the order the worker named them.
    :ivar name: their names joined with C{+}, for log lines.
    :ivar slots: the slot is attached to each pool.
    :ivar watching: a slot out of line watches each pool.
    """

    def __init__(self, pools: list[Pool[Q]]) -> None:
        self.pools = pools
        self.name = "+".join(pool.name for pool in pools)
        self.slots: _InEvery = _InEvery([pool.slots for pool in pools])
        self.watching: _InEvery = _InEvery([pool.watching for pool in pools])

    @property
    def queued(self) -> int:
        """How many jobs wait in all its pools."""
        return sum(pool.queued for pool in self.pools)

    def head_waited(self) -> float | None:
        """How long the oldest job at the head of any of its pools has waited."""
        waits = [wait for wait in (pool.head_waited() for pool in self.pools) if wait is not None]
        return max(waits, default=None)

    def get(self) -> Deferred[Q]:
        """
        The oldest job waiting in any of the pools, or else the first one
        queued in any of them.  Cancel the L{Deferred} to leave every line.
        """
        oldest = max(
            (pool for pool in self.pools if pool.queued),
            key=lambda pool: pool.head_waited(), default=None)
        if oldest is not None:
            return oldest.get()
        waits: list[Deferred[Q]] = []

        def leave_every_line(taken: Deferred[Q]) -> None:
            for wait in waits:
                wait.cancel()

        taken: Deferred[Q] = Deferred(leave_every_line)

        def got(job: Q, this: Deferred[Q]) -> None:
            for wait in waits:
                if wait is not this:
                    wait.cancel()
            taken.callback(job)

        for pool in self.pools:
            wait = pool.get()
            waits.append(wait)
            wait.addCallbacks(got, _ignore_cancel, callbackArgs=(wait,))
        return taken


def _ignore_cancel(reason: Failure) -> None:
    reason.trap(CancelledError)

