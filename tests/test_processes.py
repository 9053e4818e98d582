"""
``--processes N`` and ``--max-jobs N``: the supervising parent on a fake
reactor (spawning, backoff, planned exits, stop, reload, log lines), the
admission the children share, and real ``twistd`` parents with their
children through a real hub.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python import usage
from twisted.python.failure import Failure

from pothead.worker import tap as worker_tap
from pothead.worker.admission import (
    SHARED_DIR_ENV,
    CpuAdmission,
    MachineSlots,
    MachineTurn,
    PollAdmission,
)
from pothead.worker.processes import (
    CHILD_ENV,
    MAX_RESTART_DELAY,
    READY_FD,
    READY_FD_ENV,
    STABLE_AFTER,
    STOP_GRACE,
    ProcessSupervisor,
    ready_notice,
    restart_delay,
    twistd_command,
)
from pothead.worker.service import WorkerService, counted
from tests.processes import PROCESS_WAIT, Process, Twistd, get, start_hub, wait_until

ROOT = Path(__file__).parent.parent


# -- the parent, on a fake reactor ---------------------------------------------


class FakeProcess:
    """
    What spawnProcess returns: records signals; the test ends it.
    """

    def __init__(self, pid: int, protocol, argv, env, child_fds) -> None:
        self.pid = pid
        self.protocol = protocol
        self.argv = argv
        self.env = env
        self.child_fds = child_fds
        self.signals: list[str] = []
        self.stdin_closed = False

    def signalProcess(self, name: str) -> None:
        if self.pid is None:
            raise ProcessExitedAlready()
        self.signals.append(name)

    def closeStdin(self) -> None:
        self.stdin_closed = True

    def say(self, data: bytes, fd: int = 1) -> None:
        self.protocol.childDataReceived(fd, data)

    def exit(self, code: int = 0, signal: int | None = None) -> None:
        if code == 0 and signal is None:
            reason = Failure(ProcessDone(0))
        else:
            reason = Failure(ProcessTerminated(exitCode=None if signal else code, signal=signal))
        self.pid = None
        self.protocol.processExited(reason)
        self.protocol.processEnded(reason)


class ProcessReactor(MemoryReactorClock):
    """
    A memory reactor with a clock that spawns L{FakeProcess}es.
    """

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[FakeProcess] = []
        self._pids = itertools.count(1000)

    def spawnProcess(self, protocol, executable, args=(), env=None, path=None, uid=None,
                     gid=None, usePTY=False, childFDs=None):
        assert executable == args[0]
        process = FakeProcess(next(self._pids), protocol, list(args), env, childFDs)
        self.spawned.append(process)
        protocol.makeConnection(process)
        return process

    def callFromThread(self, f, *args, **kwargs):
        f(*args, **kwargs)


class Signals:
    """
    A fake C{signal.signal}: remembers the handlers.
    """

    def __init__(self) -> None:
        self.handlers: dict = {signal.SIGHUP: signal.SIG_DFL}

    def __call__(self, number, handler):
        previous, self.handlers[number] = self.handlers.get(number), handler
        return previous


def supervise(count=2, share_admission=False, drain_timeout=5.0, jitter=0.5):
    reactor, signals = ProcessReactor(), Signals()
    supervisor = ProcessSupervisor(
        reactor, ["/py", "/bin/twistd", "-n", "pothead-worker", "--app=m:a"], count,
        drain_timeout=drain_timeout, share_admission=share_admission,
        environ={"PATH": "/bin"}, random=lambda: jitter, install_signal=signals,
    )
    supervisor.startService()
    return supervisor, reactor, signals


def live(reactor: ProcessReactor) -> list[FakeProcess]:
    return [p for p in reactor.spawned if p.pid is not None]


def texts(events) -> list[str]:
    return [formatEvent(event) for event in events]


@pytest.mark.unit
def test_restart_delay_doubles_to_a_cap_with_jitter():
    """
    The delay before a restart doubles with each death in a row, from
    0.1 s to a cap of a few seconds, and jitter spreads it by half either
    way.
    """
    middle = [restart_delay(n, random=lambda: 0.5) for n in range(1, 9)]
    assert middle == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, MAX_RESTART_DELAY, MAX_RESTART_DELAY]
    assert restart_delay(1, random=lambda: 0.0) == pytest.approx(0.05)
    assert restart_delay(20, random=lambda: 0.999) == pytest.approx(MAX_RESTART_DELAY * 1.499)


@pytest.mark.unit
def test_twistd_command():
    """
    Children run the twistd script beside this Python, with this Python;
    without one, twistd's entry point from -c (never python -m twisted,
    which is twist).
    """
    assert twistd_command("/venv/bin/python", exists=lambda path: True) == [
        "/venv/bin/python", "/venv/bin/twistd"
    ]
    assert twistd_command("/usr/bin/python3", exists=lambda path: False) == [
        "/usr/bin/python3", "-c", "from twisted.scripts.twistd import run; run()"
    ]


@pytest.mark.unit
def test_children_started_with_their_environment():
    """
    Starting spawns one child per process, each told its number and where
    to say it is ready, with the parent's environment, its stdin closed;
    with shared admission, all are given the same new directory, removed
    at stop.
    """
    supervisor, reactor, _ = supervise(count=3, share_admission=True)
    assert [p.pid for p in live(reactor)] == [1000, 1001, 1002]
    shared = supervisor.shared
    assert shared and os.path.isdir(shared)
    for index, process in enumerate(reactor.spawned, start=1):
        assert process.argv == supervisor.command
        assert process.env == {"PATH": "/bin", CHILD_ENV: str(index),
                               READY_FD_ENV: str(READY_FD), SHARED_DIR_ENV: shared}
        assert process.child_fds == {0: "w", 1: "r", 2: "r", READY_FD: "r"}
        assert process.stdin_closed
    stopped = supervisor.stopService()
    for process in live(reactor):
        process.exit(0)
    assert stopped.called
    assert not os.path.exists(shared)


@pytest.mark.unit
def test_dead_child_restarted_with_backoff():
    """
    A child that dies is restarted after the backoff's delay, not before;
    the delay doubles while it keeps dying, and starts over once a child
    has stayed up STABLE_AFTER seconds.  The other child is left alone.
    """
    supervisor, reactor, _ = supervise(count=2)
    first, other = reactor.spawned
    delays = []
    victim = first
    for _ in range(3):
        victim.exit(signal=signal.SIGKILL)
        delay = reactor.getDelayedCalls()[0].getTime() - reactor.seconds()
        delays.append(round(delay, 3))
        reactor.advance(delay - 0.001)
        assert len(live(reactor)) == 1
        reactor.advance(0.001)
        assert len(live(reactor)) == 2
        victim = reactor.spawned[-1]
    assert delays == [0.1, 0.2, 0.4]
    reactor.advance(STABLE_AFTER)
    victim.exit(code=1)
    assert round(reactor.getDelayedCalls()[0].getTime() - reactor.seconds(), 3) == 0.1
    assert other.pid is not None and other.signals == []


@pytest.mark.unit
def test_planned_exit_replaced_at_once():
    """
    A child that exits 0 on its own (it served its --max-jobs and drained)
    is replaced at once, with no backoff, and its backoff starts over.
    """
    supervisor, reactor, _ = supervise(count=2)
    first = reactor.spawned[0]
    first.exit(signal=signal.SIGSEGV)
    reactor.advance(1)
    replacement = reactor.spawned[-1]
    with capturedLogs() as events:
        replacement.exit(0)
    assert len(live(reactor)) == 2 and not reactor.getDelayedCalls()
    assert any("exited 0 after" in text and "replacing it" in text for text in texts(events))
    reactor.spawned[-1].exit(signal=signal.SIGKILL)
    assert round(reactor.getDelayedCalls()[0].getTime() - reactor.seconds(), 3) == 0.1


@pytest.mark.unit
def test_child_lines_relogged_naming_the_child():
    """
    Each line a child writes is logged by the parent as that child's, at
    the level the child logged it (continuation lines at their event's),
    without the child's timestamp; a line split across reads is logged
    once whole; stderr lines are warnings.
    """
    supervisor, reactor, _ = supervise(count=1)
    child = reactor.spawned[0]
    with capturedLogs() as events:
        child.say(b"2026-12-02T05:08:26+0000 [pothead.worker.service#info] draining 2 slots\n")
        child.say(b"2026-12-02T05:08:27+0000 [pothead.worker#warn] drain timed out\n\tdet")
        child.say(b"ail\n2026-12-02T05:08:28+0000 [-] old style {braces}\n")
        child.say(b"Traceback: boom\n", fd=2)
        child.say(b"no newline at the end")
        child.exit(0)
    relogged = [(e["log_level"], formatEvent(e)) for e in events if "line" in e]
    assert relogged == [
        (LogLevel.info, "child 1 (pid 1000): [pothead.worker.service#info] draining 2 slots"),
        (LogLevel.warn, "child 1 (pid 1000): [pothead.worker#warn] drain timed out"),
        (LogLevel.warn, "child 1 (pid 1000): \tdetail"),
        (LogLevel.info, "child 1 (pid 1000): [-] old style {braces}"),
        (LogLevel.warn, "child 1 (pid 1000): Traceback: boom"),
        (LogLevel.info, "child 1 (pid 1000): no newline at the end"),
    ]


@pytest.mark.unit
def test_stop_drains_every_child_and_exits_0():
    """
    Stopping sends every child SIGTERM once, cancels a pending restart,
    and finishes when all have exited; when all exited 0 the parent exits
    0 though a signal stopped it.
    """
    supervisor, reactor, signals = supervise(count=3)
    reactor.spawned[2].exit(signal=signal.SIGKILL)
    reactor._exitSignal = signal.SIGTERM
    stopped = supervisor.stopService()
    first, second = live(reactor)
    assert (first.signals, second.signals) == (["TERM"], ["TERM"])
    first.exit(0)
    assert not stopped.called
    second.exit(0)
    assert stopped.called
    assert reactor._exitSignal is None
    assert len(reactor.spawned) == 3 and not any(c.active() for c in reactor.getDelayedCalls())
    assert signals.handlers[signal.SIGHUP] == signal.SIG_DFL


@pytest.mark.unit
def test_stop_keeps_the_signal_when_a_child_did_not_drain():
    """
    A child that does not exit within its drain timeout and the grace is
    killed; the parent then keeps the signal's exit status.
    """
    supervisor, reactor, _ = supervise(count=2, drain_timeout=5.0)
    reactor._exitSignal = signal.SIGTERM
    stopped = supervisor.stopService()
    first, stuck = live(reactor)
    first.exit(0)
    reactor.advance(5.0 + STOP_GRACE - 0.01)
    assert stuck.signals == ["TERM"]
    reactor.advance(0.01)
    assert stuck.signals == ["TERM", "KILL"]
    stuck.exit(signal=signal.SIGKILL)
    assert stopped.called
    assert reactor._exitSignal == signal.SIGTERM
    assert not any(call.active() for call in reactor.getDelayedCalls())


@pytest.mark.unit
def test_stop_before_ready_counts_as_clean():
    """
    A child killed by the SIGTERM it was sent before it said it was ready
    (twistd handles SIGTERM only once running) held no slot: that is
    still a clean stop.
    """
    supervisor, reactor, _ = supervise(count=1)
    reactor._exitSignal = signal.SIGTERM
    stopped = supervisor.stopService()
    reactor.spawned[0].exit(signal=signal.SIGTERM)
    assert stopped.called and reactor._exitSignal is None


@pytest.mark.unit
def test_sighup_replaces_children_one_at_a_time():
    """
    SIGHUP drains one child (SIGTERM), starts its replacement only once it
    has exited, and drains the next only once that replacement says it is
    ready; at the end every child is new.
    """
    supervisor, reactor, signals = supervise(count=2)
    old = list(reactor.spawned)
    for process in old:
        process.say(b"ready\n", fd=READY_FD)
    signals.handlers[signal.SIGHUP](signal.SIGHUP, None)
    assert (old[0].signals, old[1].signals) == (["TERM"], [])
    old[0].exit(0)
    new_first = reactor.spawned[-1]
    assert new_first.env[CHILD_ENV] == "1" and old[1].signals == []
    new_first.say(b"ready\n", fd=READY_FD)
    assert old[1].signals == ["TERM"]
    old[1].exit(0)
    new_second = reactor.spawned[-1]
    assert new_second.env[CHILD_ENV] == "2"
    new_second.say(b"ready\n", fd=READY_FD)
    assert {p.pid for p in live(reactor)} == {new_first.pid, new_second.pid}
    assert supervisor._reloading is None and not reactor.getDelayedCalls()


@pytest.mark.unit
def test_sighup_during_a_reload_asks_for_another_round():
    """
    A SIGHUP during a reload replaces, once it is done, the children it
    replaced before that SIGHUP came; a reload moves on when a
    replacement never says it is ready.
    """
    supervisor, reactor, _ = supervise(count=2)
    supervisor.reload()
    reactor.spawned[0].exit(0)
    supervisor.reload()
    reactor.spawned[-1].say(b"ready\n", fd=READY_FD)
    reactor.spawned[1].exit(0)
    reactor.advance(30)
    # The second round: both children of the first are replaced again.
    assert reactor.spawned[2].signals == ["TERM"]
    reactor.spawned[2].exit(0)
    reactor.spawned[-1].say(b"ready\n", fd=READY_FD)
    assert reactor.spawned[3].signals == ["TERM"]
    reactor.spawned[3].exit(0)
    reactor.spawned[-1].say(b"ready\n", fd=READY_FD)
    assert len(reactor.spawned) == 6 and len(live(reactor)) == 2
    assert supervisor._reloading is None


@pytest.mark.unit
def test_stop_during_a_reload():
    """
    Stopping in the middle of a reload starts no replacement: the child
    draining for the reload is waited for, not signalled twice.
    """
    supervisor, reactor, _ = supervise(count=2)
    supervisor.reload()
    draining, other = reactor.spawned
    stopped = supervisor.stopService()
    assert draining.signals == ["TERM"] and other.signals == ["TERM"]
    draining.exit(0)
    other.exit(0)
    assert stopped.called and len(reactor.spawned) == 2


@pytest.mark.unit
def test_ready_notice(tmp_path):
    """
    A child told a descriptor writes "ready" on it once the reactor runs,
    and "leaving" when it drains of its own accord; a process that was
    told none has no notice.
    """
    assert ready_notice(MemoryReactorClock(), environ={}) is None
    read_end, write_end = os.pipe()
    environ = {READY_FD_ENV: str(write_end)}
    reactor = MemoryReactorClock()
    notice = ready_notice(reactor, environ=environ)
    assert environ == {} and not os.get_inheritable(write_end)
    notice.startService()
    reactor.run()
    notice.leaving()
    os.close(write_end)
    with os.fdopen(read_end, "rb") as said:
        assert said.read() == b"ready\nleaving\n"


@pytest.mark.unit
def test_a_child_leaving_is_waited_for_not_signalled():
    """
    A child that said it is leaving (--max-jobs) is not sent SIGTERM by a
    stop or a reload (a second stop would make twistd exit by the signal):
    it is waited for, and counts as drained when it exits 0; split across
    reads, what it says is heard once whole.
    """
    supervisor, reactor, _ = supervise(count=2)
    first, second = reactor.spawned
    first.say(b"rea", fd=READY_FD)
    first.say(b"dy\nleav", fd=READY_FD)
    first.say(b"ing\n", fd=READY_FD)
    assert supervisor.children[0].is_ready and supervisor.children[0].leaving
    supervisor.reload()
    assert first.signals == []
    first.exit(0)
    assert len(reactor.spawned) == 3  # one replacement, by the reload
    reactor.spawned[2].say(b"ready\nleaving\n", fd=READY_FD)
    reactor._exitSignal = signal.SIGTERM
    stopped = supervisor.stopService()
    assert reactor.spawned[2].signals == [] and second.signals == ["TERM"]
    reactor.spawned[2].exit(0)
    second.exit(0)
    assert stopped.called and reactor._exitSignal is None


# -- options -------------------------------------------------------------------


@pytest.mark.unit
def test_processes_and_max_jobs_options(tmp_path):
    """
    --processes and --max-jobs take whole numbers above 0; the parent
    checks the app's module exists without importing it, and a missing one
    is a usage error as without --processes.
    """
    (tmp_path / "exploding_pothead_app.py").write_text("raise SystemExit('imported!')\n")
    options = worker_tap.Options()
    options.parseOptions(["--app", "exploding_pothead_app:app", "--app-dir", str(tmp_path),
                          "--processes", "3", "--max-jobs", "50"])
    assert (options["processes"], options["max-jobs"]) == (3, 50)
    assert "wsgi" not in options and "exploding_pothead_app" not in sys.modules
    for argv, message in [
        (["--processes", "0"], "--processes must be a whole number above 0"),
        (["--max-jobs", "x"], "--max-jobs must be a whole number above 0"),
        (["--processes", "2", "--app", "no_such_pothead_module:app"],
         "No such WSGI application: cannot find module"),
    ]:
        with pytest.raises(usage.UsageError, match=message):
            worker_tap.Options().parseOptions(["--app", "pothead.demo:app", *argv])


@pytest.mark.unit
def test_children_get_the_parents_options():
    """
    The parent's service is the supervisor; its children run twistd's
    pothead-worker with every option the parent was given or resolved,
    less --processes.
    """
    options = worker_tap.Options()
    options.parseOptions([
        "--app", "pothead.demo:app", "--processes", "2", "--slots", "3", "--hub", "tcp:h:1",
        "--hub", "tcp:h:2", "--spread", "even", "--max-jobs", "9", "--admission", "cpu:1,max=4",
        "--drain-timeout", "7", "--pool", "thumbs", "--pool", "models",
    ])
    service = worker_tap.makeService(options)
    assert isinstance(service, ProcessSupervisor) and len(service.children) == 2
    command = service.command
    assert command[:2] == twistd_command()
    assert command[2:] == [
        "-n", "--pidfile=", "-l", "-", "pothead-worker",
        "--app=pothead.demo:app", "--upstream-wait=30.0", f"--app-dir={os.path.abspath('.')}",
        "--spread=even",
        "--slots=3", "--admission=cpu:1,max=4", "--attach-timeout=10.0",
        "--drain-timeout=7.0", "--resolve-interval=5.0",
        "--hub=tcp:h:1", "--hub=tcp:h:2", "--pool=thumbs", "--pool=models", "--max-jobs=9",
    ]
    assert service._share_admission


# -- --max-jobs ----------------------------------------------------------------


class FakeAdmission:
    def stop(self) -> None:
        pass


@pytest.mark.unit
def test_max_jobs_stops_once():
    """
    The app call that reaches --max-jobs stops the process (once), which
    drains as on SIGTERM; calls are counted in the reactor thread.
    """
    reactor, stops = ProcessReactor(), []
    service = WorkerService(reactor, 5.0, FakeAdmission(), max_jobs=3,
                            stop=lambda: stops.append(True))
    service.startService()
    app = counted(lambda environ, start_response: [b"ok"], reactor, service.job_started)
    for _ in range(2):
        assert app({}, None) == [b"ok"]
    assert stops == []
    app({}, None)
    app({}, None)
    assert service.jobs == 4 and stops == [True]


# -- admission shared by the processes -------------------------------------------


class FakeCpu:
    def __init__(self) -> None:
        self.idle = 0.0

    def run(self, clock: Clock, seconds: float, idle_cpus: float) -> None:
        self.idle += seconds * idle_cpus
        clock.advance(seconds)


def machine_gates(tmp_path, count=2, required=1.0, max_slots=4):
    """
    C{count} CpuAdmissions as C{count} children have them: the same
    directory, the same clock and CPU readings.
    """
    clock, cpu = Clock(), FakeCpu()
    gates = [
        CpuAdmission(required, clock, max_slots=max_slots, idle_cpu_seconds=lambda: cpu.idle,
                     process_cpu_seconds=lambda: 0.0, quota=None, cpus=2, interval=0.1,
                     inertia=0.0, shared=str(tmp_path))
        for _ in range(count)
    ]
    return gates, clock, cpu


@pytest.mark.unit
def test_one_job_always_runs_per_machine(tmp_path):
    """
    "One job always runs" is the machine's: with one child's job running,
    another child waits while no CPU is idle, and is admitted at once when
    that job is done.
    """
    (first, second), clock, cpu = machine_gates(tmp_path)
    ticket = first.admit().result
    waiting = second.admit()
    cpu.run(clock, 0.1, idle_cpus=0.0)
    cpu.run(clock, 0.1, idle_cpus=0.0)
    assert not waiting.called
    ticket.done()
    cpu.run(clock, 0.1, idle_cpus=0.0)
    assert waiting.called
    second.stop()
    first.stop()


@pytest.mark.unit
def test_two_children_do_not_take_the_last_idle_cpu(tmp_path):
    """
    With one CPU and a half idle and REQUIRED 1, one child takes it; the
    other, deciding on the same readings a moment later, does not (the
    first's job has not shown in them yet), nor once the readings show it.
    """
    (first, second), clock, cpu = machine_gates(tmp_path)
    first.admit()  # the job that always runs
    cpu.run(clock, 1.0, idle_cpus=1.5)
    taken = first.admit()
    assert taken.called
    assert second.try_admit() is None
    later = second.admit()
    cpu.run(clock, 0.6, idle_cpus=0.5)
    cpu.run(clock, 0.1, idle_cpus=0.5)
    assert not later.called
    second.stop()
    first.stop()


@pytest.mark.unit
def test_max_slots_per_machine(tmp_path):
    """
    max=N counts the jobs of every child.
    """
    (first, second), clock, cpu = machine_gates(tmp_path, max_slots=2)
    first.admit()
    cpu.run(clock, 1.0, idle_cpus=8.0)
    assert second.try_admit() is not None
    cpu.run(clock, 1.0, idle_cpus=8.0)
    assert first.try_admit() is None and second.try_admit() is None
    assert (first.running, second.running) == (1, 1)


@pytest.mark.unit
def test_decision_lock_busy_means_not_now(tmp_path):
    """
    While another process decides, a decision is put off (never waited
    for in the reactor): it takes nothing and admits nothing.
    """
    slots, other = MachineSlots(str(tmp_path), 2), MachineSlots(str(tmp_path), 2)
    assert other._decide.try_lock()
    assert slots.take(0.0, 0.5, lambda running, recent: True) is None
    other._decide.unlock()
    assert slots.take(0.0, 0.5, lambda running, recent: (running, recent) == (0, 0)) == 0
    assert other.take(0.1, 0.5, lambda running, recent: (running, recent) == (1, 1)) == 1
    assert slots.take(1.0, 0.5, lambda running, recent: True) is None  # both taken


@pytest.mark.unit
def test_poll_turn_one_wait_at_a_time(tmp_path):
    """
    Under --poll-jobs the app's wait_for_slot runs in one process at a
    time: another process's wait waits its turn, and gives up when halted.
    """
    first, second = MachineTurn(str(tmp_path)), MachineTurn(str(tmp_path))
    second.poll = 0.005
    inside, release = threading.Event(), threading.Event()
    halted = threading.Event()

    def long_wait():
        inside.set()
        release.wait(10)
        return "first"

    with ThreadPoolExecutor(2) as pool:
        held = pool.submit(first.run, long_wait, lambda: False)
        assert inside.wait(10)
        waiting = pool.submit(second.run, lambda: "second", halted.is_set)
        time.sleep(0.05)  # no event says "still waiting": a bounded look
        assert not waiting.done()
        release.set()
        assert held.result(10) == "first"
        assert waiting.result(10) == "second"
        release.clear()
        inside.clear()
        held = pool.submit(first.run, long_wait, lambda: False)
        assert inside.wait(10)
        halted.set()
        assert pool.submit(second.run, lambda: "second", halted.is_set).result(10) is None
        release.set()
        held.result(10)


@pytest.mark.unit
def test_admissions_share_only_when_told(tmp_path, monkeypatch):
    """
    A gate shares with the other processes the directory named by
    $POTHEAD_ADMISSION_DIR, and nothing without it.
    """
    monkeypatch.delenv(SHARED_DIR_ENV, raising=False)
    assert CpuAdmission(1.0, Clock(), quota=None)._machine is None
    assert PollAdmission(lambda halt: None, None, None)._turn is None
    monkeypatch.setenv(SHARED_DIR_ENV, str(tmp_path))
    assert CpuAdmission(1.0, Clock(), quota=None)._machine is not None
    assert PollAdmission(lambda halt: None, None, None)._turn is not None


@pytest.mark.unit
@pytest.mark.parametrize("layout, expected", [
    ({"cpu.stat": "usage_usec 2500000\nuser_usec 2000000\n"}, 2.5),
    ({"cpuacct/cpuacct.usage": "1500000000\n"}, 1.5),
    ({"cpu,cpuacct/cpuacct.usage": "500000000\n"}, 0.5),
    ({}, None),
])
def test_cgroup_cpu_seconds(tmp_path, layout, expected):
    """
    Shared, a quota is checked against the CPU time of the whole cgroup
    (every child), read from cgroup v2's cpu.stat or v1's cpuacct.usage.
    """
    from pothead.worker.admission import cgroup_cpu_seconds

    for name, text in layout.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    read = cgroup_cpu_seconds(tmp_path)
    assert (read() if read else None) == expected


# -- real twistd parents, children and hubs ---------------------------------------

#: A render of the demo app that takes tens of milliseconds: jobs are in
#: flight whenever a signal comes.
RENDER = "/?width=100&height=40&iterations=300"

STARTED = r"started child (\d+) \(pid (\d+)\)"


@pytest.fixture
def orphans():
    """
    Parents (tests/processes.py Twistd) whose children are killed by PID
    at the end of the test, after conftest's C{started} has killed the
    parents: a parent killed with SIGKILL cannot drain its children.
    """
    parents: list = []
    yield parents
    for parent in parents:
        for match in re.finditer(STARTED, parent.output):
            pid = int(match.group(2))
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                    if b"pothead-worker" not in cmdline.read():
                        continue
                os.kill(pid, signal.SIGKILL)
            except (FileNotFoundError, ProcessLookupError):
                pass


def start_workers(tmp_path, worker_port, *argv):
    """A worker (with --processes, a parent) serving the demo app."""
    return Twistd("pothead-worker", "--app", "pothead.demo:app",
                  "--hub", f"tcp:127.0.0.1:{worker_port}", *argv, cwd=tmp_path)


def children(parent, count: int) -> dict[int, int]:
    """The pid of each child, once C{count} children have been started."""
    return {int(m.group(1)): int(m.group(2)) for m in parent.wait_for(STARTED, count=count)}


def rendered_by(body: bytes) -> int:
    return int(re.search(rb"rendered by pid (\d+)", body).group(1))


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1].startswith("Z")
    except FileNotFoundError:
        return True


class Load:
    """
    Threads that send the demo render to the hub until stopped (at most a
    minute, or 1000 requests each), recording what each got back.
    """

    def __init__(self, consumer_port: int, threads: int) -> None:
        self.url = f"http://127.0.0.1:{consumer_port}{RENDER}"
        self.outcomes: list[tuple[object, int | None]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + 60
        for _ in range(1000):
            if self._stop.is_set() or time.monotonic() > deadline:
                return
            try:
                status, body = get(self.url, timeout=30)
                outcome = (status, rendered_by(body) if status == 200 else None)
            except OSError as e:
                outcome = (repr(e), None)
            with self._lock:
                self.outcomes.append(outcome)

    def answered(self) -> int:
        with self._lock:
            return len(self.outcomes)

    def more(self, count: int, what: str) -> None:
        """Wait until C{count} more requests have been answered."""
        target = self.answered() + count
        wait_until(lambda: self.answered() >= target, what=what)

    def stop(self) -> list[tuple[object, int | None]]:
        self._stop.set()
        for thread in self._threads:
            thread.join(40)
        assert not any(thread.is_alive() for thread in self._threads)
        failures = [status for status, _ in self.outcomes if status != 200]
        assert not failures, f"{len(failures)} of {len(self.outcomes)} failed: {failures[:10]}"
        return self.outcomes


@pytest.mark.process
def test_every_child_attaches_and_a_killed_one_is_replaced(tmp_path, orphans, started):
    """
    --processes 2 --slots 2: both children attach both their slots, both
    render; a child killed with SIGKILL is started again, and its
    replacement attaches and renders, while the parent logs its children's
    lines as theirs.
    """
    hub, (consumer, worker_port) = start_hub(tmp_path)
    started.append(hub)
    parent = start_workers(tmp_path, worker_port, "--processes", "2", "--slots", "2")
    started.append(parent)
    orphans.append(parent)
    pids = children(parent, 2)
    hub.wait_for(r"attached to pool default", count=4)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: get(f"http://127.0.0.1:{consumer}{RENDER}"), range(12)))
    assert {status for status, _ in answers} == {200}
    assert {rendered_by(body) for _, body in answers} == set(pids.values())
    assert re.search(rf"child 1 \(pid {pids[1]}\): \[", parent.output), parent.output

    os.kill(pids[1], signal.SIGKILL)
    parent.wait_for(rf"child 1 \(pid {pids[1]}\) was killed by signal 9 \(SIGKILL\)")
    new = children(parent, 3)[1]
    assert new not in pids.values()
    hub.wait_for(r"attached to pool default", count=6)
    seen: set[int] = set()

    def new_one_rendered() -> bool:
        with ThreadPoolExecutor(4) as pool:
            for status, body in pool.map(lambda _: get(f"http://127.0.0.1:{consumer}{RENDER}"),
                                         range(4)):
                assert status == 200
                seen.add(rendered_by(body))
        return new in seen

    wait_until(new_one_rendered, what="the replacement to render")
    assert parent.stop() == 0, parent.output


@pytest.mark.process
def test_sigterm_drains_every_child_and_exits_0(tmp_path, orphans, started):
    """
    SIGTERM to the parent under load: every child drains, the parent
    exits 0 once all have, and no consumer request fails (what was queued
    goes to another worker).
    """
    hub, (consumer, worker_port) = start_hub(tmp_path)
    started.append(hub)
    standby = start_workers(tmp_path, worker_port)
    started.append(standby)
    parent = start_workers(tmp_path, worker_port, "--processes", "2")
    started.append(parent)
    orphans.append(parent)
    pids = children(parent, 2)
    hub.wait_for(r"attached to pool default", count=3)
    load = Load(consumer, threads=4)
    load.more(20, "load under way")
    parent.process.send_signal(signal.SIGTERM)
    assert parent.process.wait(PROCESS_WAIT) == 0, parent.output
    assert all(gone(pid) for pid in pids.values())
    load.more(10, "load served by the other worker")
    outcomes = load.stop()
    assert set(pids.values()) <= {pid for _, pid in outcomes}
    assert "all worker processes drained" in parent.output
    for index, pid in pids.items():
        assert f"child {index} (pid {pid}) exited 0" in parent.output, parent.output


@pytest.mark.process
def test_sighup_replaces_every_child_under_load(tmp_path, orphans, started):
    """
    SIGHUP to the parent under load: the children are replaced one at a
    time, every one by a new process, and no consumer request fails.
    """
    hub, (consumer, worker_port) = start_hub(tmp_path)
    started.append(hub)
    parent = start_workers(tmp_path, worker_port, "--processes", "2")
    started.append(parent)
    orphans.append(parent)
    old = children(parent, 2)
    hub.wait_for(r"attached to pool default", count=2)
    load = Load(consumer, threads=3)
    load.more(10, "load under way")
    parent.process.send_signal(signal.SIGHUP)
    parent.wait_for(r"reload done")
    new = children(parent, 4)
    assert not set(new.values()) & set(old.values())
    hub.wait_for(r"attached to pool default", count=4)
    load.more(20, "load after the reload")
    outcomes = load.stop()
    assert set(new.values()) <= {pid for _, pid in outcomes}
    assert all(gone(pid) for pid in old.values())
    assert parent.stop() == 0, parent.output


@pytest.mark.process
def test_max_jobs_recycles_a_process(tmp_path, orphans, started):
    """
    --max-jobs 3 under --processes 2: a child that has taken 3 jobs drains
    and exits 0, and the parent starts another at once; every request is
    answered.
    """
    hub, (consumer, worker_port) = start_hub(tmp_path)
    started.append(hub)
    parent = start_workers(tmp_path, worker_port, "--processes", "2", "--max-jobs", "3")
    started.append(parent)
    orphans.append(parent)
    first = children(parent, 2)
    hub.wait_for(r"attached to pool default", count=2)
    renderers = []
    for _ in range(9):
        status, body = get(f"http://127.0.0.1:{consumer}/?width=20&height=10")
        assert status == 200
        renderers.append(rendered_by(body))
    parent.wait_for(r"exited 0 after [\d.]+s; replacing it")
    assert len(set(renderers)) >= 3, renderers
    assert all(renderers.count(pid) <= 3 for pid in set(renderers)), renderers
    assert "took 3 jobs (--max-jobs)" in parent.output
    assert not [line for line in parent.lines if "restarting it in" in line]
    latest = children(parent, 3)
    assert len(latest) == 2 and set(latest.values()) != set(first.values())
    assert parent.stop() == 0, parent.output


@pytest.mark.process
def test_max_jobs_alone_exits_0(tmp_path, started):
    """
    --max-jobs without --processes: the worker drains after its Nth job
    and exits 0, for its service manager to start another.
    """
    hub, (consumer, worker_port) = start_hub(tmp_path)
    started.append(hub)
    worker = start_workers(tmp_path, worker_port, "--max-jobs", "2")
    started.append(worker)
    hub.wait_for(r"attached to pool default")
    for _ in range(2):
        assert get(f"http://127.0.0.1:{consumer}/?width=20&height=10")[0] == 200
    assert worker.process.wait(PROCESS_WAIT) == 0, worker.output
    assert "took 2 jobs (--max-jobs); draining" in worker.output


@pytest.mark.process
def test_slots_of_a_killed_process_are_free_again(tmp_path, started):
    """
    A machine-wide admission slot held by a process killed with SIGKILL is
    free again at once: the kernel drops the dead process's lock.
    """
    holder = Process([sys.executable, "-c", (
        "import sys, time; from pothead.worker.admission import MachineSlots; "
        f"s = MachineSlots({str(tmp_path)!r}, 2); "
        "print(s.take(0.0, 0.5, lambda running, recent: True), flush=True); time.sleep(60)"
    )], cwd=ROOT)
    started.append(holder)
    holder.wait_for(r"^0$")
    slots = MachineSlots(str(tmp_path), 2)
    counted_: list = []
    assert slots.take(100.0, 0.5, lambda running, recent: counted_.append(running)) is None
    holder.process.kill()
    holder.process.wait(PROCESS_WAIT)
    assert slots.take(100.0, 0.5, lambda running, recent: counted_.append(running) or True) == 0
    assert counted_ == [1, 0]
