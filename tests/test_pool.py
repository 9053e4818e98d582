"""
The pool's queue: L{Line} is the one place that relies on
L{DeferredQueue}'s internals (its C{pending} and C{waiting} lists), so
these tests pin what it relies on; a Twisted that changed them fails here
first, by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from twisted.internet.defer import CancelledError, DeferredQueue
from twisted.internet.task import Clock

from pothead.hub.pool import Line, Pool

pytestmark = pytest.mark.unit


@dataclass(eq=False)
class Item:
    """A queued item as the pool sees one."""

    name: str
    queued_until: float = 10.0
    requeued: bool = False
    expired: list = field(default_factory=list)

    def waited_too_long(self) -> None:
        self.expired.append(self.name)


def taken(line: Line) -> list:
    """Every item a getter receives, in order."""
    got: list = []
    line.get().addCallback(got.append)
    return got


def test_deferred_queue_keeps_what_line_relies_on():
    """
    Items wait in C{pending} in FIFO order, getters in C{waiting}; a
    cancelled getter leaves C{waiting}.
    """
    queue = DeferredQueue()
    queue.put("a")
    queue.put("b")
    assert queue.pending == ["a", "b"] and queue.waiting == []
    got = []
    queue.get().addCallback(got.append)
    assert got == ["a"] and queue.pending == ["b"]
    queue.get()
    waiting = queue.get()
    assert len(queue.waiting) == 1
    waiting.addErrback(lambda failure: failure.trap(CancelledError))
    waiting.cancel()
    assert queue.waiting == []


def test_items_and_getters_pair_oldest_first():
    """The longest-waiting getter takes the next item put; items go out in order."""
    line = Line()
    first, second = taken(line), taken(line)
    assert line.getters == 2
    line.put(Item("a"))
    assert [i.name for i in first] == ["a"] and second == [] and line.getters == 1
    line.put(Item("b"))
    line.put(Item("c"))
    assert [i.name for i in second] == ["b"] and len(line) == 1


def test_put_first_goes_to_a_waiting_getter_or_the_head():
    line = Line()
    getter = taken(line)
    assert line.put_first(Item("handed back")) is False
    assert [i.name for i in getter] == ["handed back"]
    line.put(Item("a"))
    assert line.put_first(Item("b")) is True
    assert [i.name for i in taken(line)] == ["b"]
    assert [i.name for i in taken(line)] == ["a"]


def test_discard_and_is_last():
    line = Line()
    a, b = Item("a"), Item("b")
    line.put(a)
    line.put(b)
    assert line.is_last(b) and not line.is_last(a)
    assert line.discard(a) is True and line.discard(a) is False
    assert len(line) == 1


def test_take_due_takes_the_due_run_and_due_requeued_ones():
    """
    Due items at the front of the tail run go, and so do due requeued ones
    ahead of them; the earliest deadline left is among the head.
    """
    line = Line()
    requeued_due = Item("r1", queued_until=1.0, requeued=True)
    requeued_later = Item("r2", queued_until=9.0, requeued=True)
    for item in (requeued_due, requeued_later):
        line.put_first(item)
    for name, until in (("a", 2.0), ("b", 3.0), ("c", 8.0)):
        line.put(Item(name, queued_until=until))
    due, earliest = line.take_due(now=5.0)
    assert sorted(item.name for item in due) == ["a", "b", "r1"]
    assert earliest == 8.0
    assert len(line) == 2
    assert line.take_due(now=100.0)[1] is None and len(line) == 0


def test_pool_sends_away_due_jobs_on_one_timer():
    """One timer for the line; each due job is told, and the timer goes when the line empties."""
    clock = Clock()
    pool = Pool("default", clock)
    jobs = [Item(str(i), queued_until=float(i + 1)) for i in range(3)]
    for job in jobs:
        pool.put(job)
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(2.0)
    assert [job.expired for job in jobs] == [["0"], ["1"], []]
    assert pool.queued == 1
    pool.get()
    assert pool.queued == 0 and clock.getDelayedCalls() == []
