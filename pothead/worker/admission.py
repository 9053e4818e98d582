"""
Admission: when a worker's slot may attach, and so take a job.

A slot connects first, then asks its worker's L{IAdmission} for a ticket,
and attaches only once it has one: a gated slot costs no connect time when
it opens.  The ticket learns when a request arrives on the slot
(``request_received(environ)``) and when the slot is done (``done()``).

- L{FixedAdmission}: every slot attaches at once and stays attached; the
  worker runs as many jobs as it has slots (``--slots N``).
- L{CpuAdmission}: at least one job always runs; another slot attaches only
  while at least ``required`` CPUs are idle and the process stays under its
  cgroup CPU quota (``--admission cpu:REQUIRED[,max=N]``), as POTHEAD 0.4.3's
  ``wait_for_idle_cpus``.
- L{PollAdmission}: the app's own ``wait_for_slot(halt)``, run in a thread
  (``--poll-jobs``), with POTHEAD 0.4.3's contract.

A gated slot serves one job per attach, so that every further job is
admitted anew.
"""

from __future__ import annotations

import math
import threading
from typing import Any, Callable

from twisted.internet.defer import Deferred, DeferredLock, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from pothead.worker.cgroup import cpu_quota

_log = Logger()


class ITicket(Interface):
    """
    One slot's permission to attach, for as long as the slot lasts.
    """

    def request_received(environ: dict) -> None:
        """
        A request arrived on the slot (called in the app's thread).
        """

    def done() -> None:
        """
        The slot has ended; the ticket is returned.
        """


class IAdmission(Interface):
    """
    Decides when a slot of this worker may attach.
    """

    per_job = Attribute(
        "Whether a slot serves one job per admission (True) or stays "
        "attached across jobs (False)."
    )

    def admit() -> Deferred:
        """
        :return: fires with an L{ITicket} when one more slot may attach.
        """

    def stop() -> None:
        """
        The worker is stopping: release anything waiting in L{admit}.
        """


@implementer(ITicket)
class _Ticket:
    def __init__(self, on_done: Callable[[], None] = lambda: None) -> None:
        self._on_done = on_done
        # Taken once and never released: an atomic test-and-set, so that
        # done() said at once by the reactor (the slot lost) and by the
        # app's thread frees the slot once.
        self._done = threading.Lock()

    def request_received(self, environ: dict) -> None:
        pass

    def done(self) -> None:
        if self._done.acquire(blocking=False):
            self._on_done()


@implementer(IAdmission)
class FixedAdmission:
    """
    Every slot may attach at once: concurrency is the number of slots.
    """

    #: Slots stay attached across jobs.
    per_job = False

    def admit(self) -> Deferred:
        return succeed(_Ticket())

    def stop(self) -> None:
        pass


class _Derivative:
    """
    The smoothed rate of change of an ever-growing counter (CPU seconds),
    per second of the clock: CPUs' worth of time.
    """

    def __init__(self, read: Callable[[], float], clock: IReactorTime, inertia: float) -> None:
        self._read = read
        self._clock = clock
        self._inertia = inertia
        self._last_value = read()
        self._last_time = clock.seconds()
        self.value: float | None = None

    def update(self) -> float | None:
        now, value = self._clock.seconds(), self._read()
        elapsed = now - self._last_time
        if elapsed > 0:
            rate = (value - self._last_value) / elapsed
            self.value = rate if self.value is None else (
                self.value * self._inertia + rate * (1 - self._inertia)
            )
            self._last_time, self._last_value = now, value
        return self.value


def _psutil_idle() -> float:
    import psutil

    return psutil.cpu_times().idle


def _psutil_process_cpu() -> float:
    import psutil

    times = psutil.Process().cpu_times()
    return times.user + times.system + times.children_user + times.children_system


def _cpu_count() -> int:
    import os

    return os.cpu_count() or 1


@implementer(IAdmission)
class CpuAdmission:
    """
    Admit a slot while enough CPUs are idle; always admit one when none
    runs.

    :param required: idle CPUs needed before one more slot attaches.
    :param max_slots: slots at most (default: twice the CPUs, or the
        cgroup quota, divided by C{required}, as POTHEAD 0.4.3).
    :param clock: schedules the polling.
    :param idle_cpu_seconds: reads the machine's cumulative idle CPU time.
    :param process_cpu_seconds: reads this process's (and its children's)
        cumulative CPU time.
    :param quota: the cgroup CPU quota in CPUs, or L{None}.
    :param cpus: how many CPUs the machine has.
    :param interval: seconds between readings.
    :param inertia: smoothing of the readings, from 0 (none) to 1.

    The count, the waiting list and the readings are shared with other
    threads: L{try_admit} runs in the thread that calls the gate (one of
    the reactor's thread pool under C{--poll-jobs}), and a ticket's
    C{done()} comes from the reactor or the app.  A L{threading.Lock}
    guards them rather than C{callFromThread} to the reactor, since
    L{try_admit} must answer its caller at once and C{wait_for_idle_cpus}
    may run with no reactor at all.  It is held for one decision and the
    count it changes, so that two threads cannot both take the last room;
    L{Deferred}s fire outside it, so that their callbacks may call back in.
    """

    #: Every job is admitted anew.
    per_job = True

    def __init__(
        self,
        required: float,
        clock: IReactorTime,
        max_slots: int | None = None,
        idle_cpu_seconds: Callable[[], float] = _psutil_idle,
        process_cpu_seconds: Callable[[], float] = _psutil_process_cpu,
        quota: float | None | str = "cgroup",
        cpus: int | None = None,
        interval: float = 0.1,
        inertia: float = 0.7,
    ) -> None:
        self.required = required
        self._clock = clock
        self._quota = cpu_quota() if quota == "cgroup" else quota
        cpus = cpus or _cpu_count()
        capacity = self._quota if self._quota is not None else cpus
        self.max_slots = max_slots or max(1, math.ceil(capacity * 2 / required))
        self._lock = threading.Lock()
        self.running = 0
        self._waiting: list[Deferred] = []
        self._idle = _Derivative(idle_cpu_seconds, clock, inertia)
        self._used = _Derivative(process_cpu_seconds, clock, inertia)
        self._poll = LoopingCall(self._check)
        self._poll.clock = clock
        self._interval = interval

    def admit(self) -> Deferred:
        waiting: Deferred = Deferred(self._leave)
        with self._lock:
            self._waiting.append(waiting)
        self._check()
        if self._waiting and not self._poll.running:
            self._poll.start(self._interval, now=False)
        return waiting

    def try_admit(self) -> _Ticket | None:
        """
        A ticket if a slot may attach now, else L{None}: the same decision
        as L{admit}, without waiting (for blocking gates in a thread).
        """
        with self._lock:
            if self._waiting or not self._roomy():
                return None
            self.running += 1
        return _Ticket(self._release)

    def _leave(self, waiting: Deferred) -> None:
        with self._lock:
            if waiting in self._waiting:
                self._waiting.remove(waiting)

    def stop(self) -> None:
        if self._poll.running:
            self._poll.stop()
        with self._lock:
            waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.cancel()

    def _roomy(self) -> bool:
        # Called with the lock held.
        idle, used = self._idle.update(), self._used.update()
        if self.running == 0:
            return True
        if self.running >= self.max_slots or idle is None or idle < self.required:
            return False
        return self._quota is None or (used or 0.0) <= self._quota - self.required

    def _check(self) -> None:
        while True:
            with self._lock:
                if not (self._waiting and self._roomy()):
                    break
                self.running += 1
                admitted = self._waiting.pop(0)
            admitted.callback(_Ticket(self._release))
        if not self._waiting and self._poll.running:
            self._poll.stop()

    def _release(self) -> None:
        with self._lock:
            self.running -= 1


@implementer(ITicket)
class _AppTicket:
    """
    Wraps what an app's C{wait_for_slot} returned, whose
    C{request_received} and C{done} are both optional.
    """

    def __init__(self, callbacks: Any) -> None:
        self._callbacks = callbacks
        self._done = False

    def request_received(self, environ: dict) -> None:
        hook = getattr(self._callbacks, "request_received", None)
        if hook is not None:
            hook(environ)

    def done(self) -> None:
        hook = getattr(self._callbacks, "done", None)
        if hook is not None and not self._done:
            self._done = True
            hook()


@implementer(IAdmission)
class PollAdmission:
    """
    The app decides: its C{wait_for_slot(halt)} blocks (in a thread) until
    one more slot may attach; C{halt()} turns true when the worker stops.
    """

    per_job = True

    def __init__(self, wait_for_slot: Callable[[Callable[[], bool]], Any], reactor: Any,
                 pool: Any) -> None:
        self._wait_for_slot = wait_for_slot
        self._reactor = reactor
        self._pool = pool
        self._halted = False
        # One wait at a time, as POTHEAD 0.4.3's poll loop made them.
        self._lock = DeferredLock()

    def admit(self) -> Deferred:
        return self._lock.run(self._wait).addCallback(_AppTicket)

    def _wait(self) -> Deferred:
        return deferToThreadPool(
            self._reactor, self._pool, self._wait_for_slot, lambda: self._halted
        )

    def stop(self) -> None:
        self._halted = True


def parse_admission(spec: str) -> tuple[float, int | None]:
    """
    Parse ``cpu:REQUIRED[,max=N]``.

    :return: C{(required, max_slots)}.
    :raise ValueError: with what is wrong.
    """
    kind, _, rest = spec.partition(":")
    if kind != "cpu" or not rest:
        raise ValueError(f"--admission takes cpu:REQUIRED[,max=N], not {spec!r}")
    required_text, *options = rest.split(",")
    try:
        required = float(required_text)
    except ValueError:
        raise ValueError(f"--admission takes cpu:REQUIRED[,max=N], not {spec!r}") from None
    if not required > 0:
        raise ValueError("cpu:REQUIRED must be above 0")
    max_slots = None
    for option in options:
        name, _, value = option.partition("=")
        if name != "max" or not value.isdigit() or int(value) < 1:
            raise ValueError(f"unknown --admission option {option!r}; use max=N")
        max_slots = int(value)
    return required, max_slots
