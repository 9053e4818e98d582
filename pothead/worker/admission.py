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

Under ``--processes N`` the policy is the machine's, not each process's:
the supervising parent names a directory in ``$POTHEAD_ADMISSION_DIR``,
and every gate in its children shares it (L{MachineSlots}: the running
count and a decision lock, kept by the kernel as file locks;
L{MachineTurn}: one ``wait_for_slot`` at a time), so that "one job always
runs", ``max=N`` and "REQUIRED idle CPUs" mean what they mean for one
process, and two children never both take the last idle CPU.
"""

from __future__ import annotations

import fcntl
import math
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

from twisted.internet.defer import Deferred, DeferredLock, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from pothead.worker.cgroup import CGROUP_ROOT, cpu_quota

_log = Logger()

#: The environment variable that names the directory in which the
#: processes of one worker share their admission (set by the parent of
#: ``--processes N`` for its children; see L{pothead.worker.processes}).
SHARED_DIR_ENV = "POTHEAD_ADMISSION_DIR"

#: The default of the C{shared} parameters below: the directory named by
#: C{$POTHEAD_ADMISSION_DIR}, or nothing shared when it is unset.
FROM_ENVIRONMENT = "$" + SHARED_DIR_ENV

#: How many polls an admission counts as using its REQUIRED CPUs before
#: the readings can say so: a job's CPU shows in the smoothed idle reading
#: only over a few polls (inertia 0.7: 83 % after five).
CLAIM_POLLS = 5


def shared_directory(shared: str | None) -> str | None:
    """
    The directory a gate shares with the worker's other processes, if any.

    :param shared: a directory, L{None}, or L{FROM_ENVIRONMENT}.
    """
    if shared == FROM_ENVIRONMENT:
        return os.environ.get(SHARED_DIR_ENV) or None
    return shared


class _FileLock:
    """
    An exclusive C{flock} on one file, taken without blocking.

    Locks belong to an open file description, so two of these on the same
    file exclude each other even within one process, and the kernel drops
    a lock when the process holding it dies, however it dies.
    """

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def try_lock(self) -> bool:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def unlock(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)


class MachineSlots:
    """
    The jobs the processes of one worker run on this machine, counted by
    the kernel.

    A directory holds a file per job the machine may run at once
    (C{slot-0} ... C{slot-K}); a process holds an exclusive C{flock} on one
    for as long as its ticket lasts.  The machine's running count is the
    number of files locked, and a process that dies, even by SIGKILL,
    gives its slots back with its descriptors: there is no count to
    repair and nothing stale to clean up.  A decision holds C{decide.lock}
    from the count to the slot it takes, so that two processes cannot both
    count the same room; it is taken without blocking (another process
    deciding means "not now", and the gate polls again), so the reactor
    never waits on another process.

    Each slot's file holds the time it was taken: a job admitted a moment
    ago has not shown in the CPU readings yet, so a decision counts the
    slots taken within the last C{claim} seconds as using their CPUs
    already.

    :param directory: the directory the worker's processes share.
    :param capacity: the most jobs the machine may run at once.
    """

    def __init__(self, directory: str, capacity: int) -> None:
        root = Path(directory)
        self._decide = _FileLock(root / "decide.lock")
        self._slots = [_FileLock(root / f"slot-{index}") for index in range(capacity)]
        self._held: set[int] = set()

    def take(self, now: float, claim: float, admit: Callable[[int, int], bool]) -> int | None:
        """
        Take a slot if C{admit(running, recent)} says yes: C{running} slots
        are taken on the machine, C{recent} of them within C{claim}
        seconds before C{now}.  Not thread-safe: the caller serialises.

        :return: the slot taken, or L{None}.
        """
        if not self._decide.try_lock():
            return None
        free: list[int] = []
        try:
            running = recent = 0
            for index, slot in enumerate(self._slots):
                # Our own slots are locked through these very descriptors,
                # where a second flock would succeed: count them as held.
                if index not in self._held and slot.try_lock():
                    free.append(index)
                    continue
                running += 1
                if now - _stamp(slot.fd) < claim:
                    recent += 1
            if not (free and admit(running, recent)):
                return None
            taken = free.pop(0)
            os.pwrite(self._slots[taken].fd, f"{now:<31.6f}".encode(), 0)
            self._held.add(taken)
            return taken
        finally:
            for index in free:
                self._slots[index].unlock()
            self._decide.unlock()

    def give_back(self, index: int) -> None:
        """
        Free slot C{index}, taken by L{take}.
        """
        self._held.discard(index)
        self._slots[index].unlock()


def _stamp(fd: int) -> float:
    """
    When the slot whose file is C{fd} was taken (never, if it does not
    say).
    """
    try:
        return float(os.pread(fd, 32, 0))
    except ValueError:
        return -math.inf


class MachineTurn:
    """
    One turn at a time among the processes of one worker: the machine's
    C{wait_for_slot} is asked by one process at a time, as one process
    asks it one thread at a time.

    :param directory: the directory the worker's processes share.
    """

    #: Seconds between two tries for the turn.
    poll = 0.05

    def __init__(self, directory: str) -> None:
        self._lock = _FileLock(Path(directory) / "poll.lock")

    def run(self, f: Callable[[], Any], halt: Callable[[], bool]) -> Any:
        """
        Call C{f()} once it is this process's turn, and return what it
        returns; L{None} without calling it if C{halt()} turns true first.
        Blocks: call it in a thread.
        """
        while not self._lock.try_lock():
            if halt():
                return None
            time.sleep(self.poll)
        try:
            return f()
        finally:
            self._lock.unlock()


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
    return os.cpu_count() or 1


def cgroup_cpu_seconds(root: Path = CGROUP_ROOT) -> Callable[[], float] | None:
    """
    A reader of the CPU time used by everything in this cgroup, in
    seconds, or L{None} if no cgroup file says: what a cgroup quota caps,
    so what the worker's processes together must stay under.

    :param root: where the cgroup filesystem is mounted.
    """
    v2 = root / "cpu.stat"
    if v2.exists():
        def read_v2() -> float:
            for line in v2.read_text().splitlines():
                name, _, value = line.partition(" ")
                if name == "usage_usec":
                    return int(value) / 1e6
            return 0.0

        return read_v2
    for v1 in (root / "cpuacct", root / "cpu,cpuacct"):
        usage = v1 / "cpuacct.usage"
        if usage.exists():
            return lambda usage=usage: int(usage.read_text()) / 1e9
    return None


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
    :param shared: the directory in which the worker's processes share
        their running count (L{MachineSlots}); by default the one named by
        C{$POTHEAD_ADMISSION_DIR}, if any.  Shared, the count, C{max_slots}
        and "one job always runs" are the machine's, and under a quota the
        CPU used is the cgroup's, not this process's.

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
        shared: str | None = FROM_ENVIRONMENT,
    ) -> None:
        self.required = required
        self._clock = clock
        self._quota = cpu_quota() if quota == "cgroup" else quota
        cpus = cpus or _cpu_count()
        capacity = self._quota if self._quota is not None else cpus
        self.max_slots = max_slots or max(1, math.ceil(capacity * 2 / required))
        self._lock = threading.Lock()
        #: Jobs this process runs (the machine's count is L{MachineSlots}').
        self.running = 0
        directory = shared_directory(shared)
        self._machine = None if directory is None else MachineSlots(directory, self.max_slots)
        if self._machine is not None and self._quota is not None and (
            process_cpu_seconds is _psutil_process_cpu
        ):
            process_cpu_seconds = cgroup_cpu_seconds() or process_cpu_seconds
        self._claim = CLAIM_POLLS * interval
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
            if self._waiting:
                return None
            return self._take()

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

    def _roomy(self, running: int, recent: int = 0) -> bool:
        # Called with the lock held, the readings just updated: room for
        # one more job beside C{running}, C{recent} of them too new to
        # show in the readings.
        idle, used = self._idle.value, self._used.value
        if running == 0:
            return True
        if running >= self.max_slots or idle is None or idle - recent * self.required < (
            self.required
        ):
            return False
        return self._quota is None or (used or 0.0) + recent * self.required <= (
            self._quota - self.required
        )

    def _take(self) -> _Ticket | None:
        # Called with the lock held: one decision, and the count it changes.
        self._idle.update()
        self._used.update()
        if self._machine is None:
            if not self._roomy(self.running):
                return None
            self.running += 1
            return _Ticket(self._release)
        slot = self._machine.take(self._clock.seconds(), self._claim, self._roomy)
        if slot is None:
            return None
        self.running += 1
        return _Ticket(lambda: self._release(slot))

    def _check(self) -> None:
        while True:
            with self._lock:
                if not self._waiting:
                    break
                ticket = self._take()
                if ticket is None:
                    break
                admitted = self._waiting.pop(0)
            admitted.callback(ticket)
        if not self._waiting and self._poll.running:
            self._poll.stop()

    def _release(self, slot: int | None = None) -> None:
        with self._lock:
            self.running -= 1
            if slot is not None:
                self._machine.give_back(slot)


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

    :param shared: the directory in which the worker's processes take
        turns (L{MachineTurn}), so that the app is asked one wait at a time
        on the machine; by default the one named by
        C{$POTHEAD_ADMISSION_DIR}, if any.
    """

    per_job = True

    def __init__(self, wait_for_slot: Callable[[Callable[[], bool]], Any], reactor: Any,
                 pool: Any, shared: str | None = FROM_ENVIRONMENT) -> None:
        self._wait_for_slot = wait_for_slot
        self._reactor = reactor
        self._pool = pool
        self._halted = False
        # One wait at a time, as POTHEAD 0.4.3's poll loop made them.
        self._lock = DeferredLock()
        directory = shared_directory(shared)
        self._turn = None if directory is None else MachineTurn(directory)

    def admit(self) -> Deferred:
        return self._lock.run(self._wait).addCallback(_AppTicket)

    def _wait(self) -> Deferred:
        return deferToThreadPool(self._reactor, self._pool, self._wait_in_turn)

    def _wait_in_turn(self) -> Any:
        def halt() -> bool:
            return self._halted

        if self._turn is None:
            return self._wait_for_slot(halt)
        return self._turn.run(lambda: self._wait_for_slot(halt), halt)

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
