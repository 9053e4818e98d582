"""
Admission: cgroup quotas, CPU-idle gating on an injected clock and CPU
readers, and the app-provided wait_for_slot contract.
"""

from __future__ import annotations

import itertools
import sys
import threading
import time

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.python import usage
from zope.interface.verify import verifyObject

from pothead.worker import admission as admission_module
from pothead.worker import tap as worker_tap
from pothead.worker.admission import (
    CpuAdmission,
    FixedAdmission,
    IAdmission,
    PollAdmission,
    parse_admission,
)
from pothead.worker.cgroup import cpu_quota
from tests.harness import wait_for
from tests.http import Client


@pytest.mark.unit
def test_cgroup_v2(tmp_path):
    """
    cgroup v2's cpu.max gives the quota in CPUs, or none for "max".
    """
    (tmp_path / "cpu.max").write_text("250000 100000\n")
    assert cpu_quota(tmp_path) == 2.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpu_quota(tmp_path) is None


@pytest.mark.unit
@pytest.mark.parametrize("directory", ["cpu", "cpu,cpuacct"])
def test_cgroup_v1(tmp_path, directory):
    """
    cgroup v1's cfs quota and period give the quota; -1 means none.
    """
    (tmp_path / directory).mkdir()
    (tmp_path / directory / "cpu.cfs_quota_us").write_text("50000\n")
    (tmp_path / directory / "cpu.cfs_period_us").write_text("100000\n")
    assert cpu_quota(tmp_path) == 0.5
    (tmp_path / directory / "cpu.cfs_quota_us").write_text("-1\n")
    assert cpu_quota(tmp_path) is None


@pytest.mark.unit
def test_no_cgroup(tmp_path):
    """
    Without any cgroup CPU file there is no quota.
    """
    assert cpu_quota(tmp_path) is None


class FakeCpu:
    """
    Cumulative CPU counters the test moves by hand, with the clock.
    """

    def __init__(self) -> None:
        self.idle = 0.0
        self.used = 0.0

    def run(self, clock: Clock, seconds: float, idle_cpus: float, used_cpus: float = 0.0):
        self.idle += seconds * idle_cpus
        self.used += seconds * used_cpus
        clock.advance(seconds)


def gate(required=1.0, max_slots=None, quota=None, cpus=4):
    clock, cpu = Clock(), FakeCpu()
    admission = CpuAdmission(
        required, clock, max_slots=max_slots,
        idle_cpu_seconds=lambda: cpu.idle, process_cpu_seconds=lambda: cpu.used,
        quota=quota, cpus=cpus, interval=0.1, inertia=0.0,
    )
    return admission, clock, cpu


@pytest.mark.unit
def test_cpu_admission_provides_interface():
    """
    Every admission policy provides IAdmission.
    """
    admission, _, _ = gate()
    for policy in (admission, FixedAdmission(), PollAdmission(lambda halt: None, reactor, None)):
        assert verifyObject(IAdmission, policy)


@pytest.mark.unit
def test_first_job_always_admitted():
    """
    With nothing running, a slot is admitted at once, however busy the CPU.
    """
    admission, clock, cpu = gate(required=2)
    first = admission.admit()
    assert first.called


@pytest.mark.unit
def test_more_only_while_cpus_idle():
    """
    A further slot waits while fewer than REQUIRED CPUs are idle, and is
    admitted once enough are.
    """
    admission, clock, cpu = gate(required=2)
    admission.admit()
    second = admission.admit()
    for _ in range(5):
        cpu.run(clock, 0.1, idle_cpus=1.0)
    assert not second.called
    cpu.run(clock, 0.1, idle_cpus=3.0)
    assert second.called
    assert admission.running == 2
    assert not clock.getDelayedCalls()


@pytest.mark.unit
def test_done_ticket_frees_a_slot():
    """
    When a ticket is done the slot count drops, and with nothing running
    the next slot is admitted whatever the CPU says.
    """
    admission, clock, cpu = gate(required=2)
    ticket = admission.admit().result
    waiting = admission.admit()
    cpu.run(clock, 0.1, idle_cpus=0.0)
    assert not waiting.called
    ticket.done()
    ticket.done()
    cpu.run(clock, 0.1, idle_cpus=0.0)
    assert waiting.called
    assert admission.running == 1


@pytest.mark.unit
def test_max_slots_bound():
    """
    No more than max slots are admitted, however idle the CPUs.
    """
    admission, clock, cpu = gate(required=1, max_slots=2)
    admitted = [admission.admit() for _ in range(3)]
    cpu.run(clock, 0.1, idle_cpus=8.0)
    cpu.run(clock, 0.1, idle_cpus=8.0)
    assert [d.called for d in admitted] == [True, True, False]
    admission.stop()
    failures: list = []
    admitted[2].addErrback(failures.append)
    assert failures[0].check(CancelledError)


@pytest.mark.unit
def test_default_max_from_cpus_or_quota():
    """
    Without max=, at most twice the CPUs (or the quota) over REQUIRED.
    """
    assert gate(required=1, cpus=4)[0].max_slots == 8
    assert gate(required=3, cpus=4)[0].max_slots == 3
    assert gate(required=1, quota=1.5, cpus=16)[0].max_slots == 3


@pytest.mark.unit
def test_quota_keeps_process_under_it():
    """
    Under a cgroup quota, a further slot waits while the process already
    uses more than the quota less REQUIRED, even with idle CPUs.
    """
    admission, clock, cpu = gate(required=1, quota=2.0, cpus=8)
    admission.admit()
    second = admission.admit()
    cpu.run(clock, 0.1, idle_cpus=6.0, used_cpus=1.5)
    assert not second.called
    cpu.run(clock, 0.1, idle_cpus=6.0, used_cpus=0.5)
    assert second.called


@pytest.mark.unit
@pytest.mark.parametrize(
    "spec, parsed",
    [("cpu:2", (2.0, None)), ("cpu:0.5,max=4", (0.5, 4))],
)
def test_parse_admission(spec, parsed):
    """
    cpu:REQUIRED[,max=N] parses to its numbers.
    """
    assert parse_admission(spec) == parsed


@pytest.mark.unit
@pytest.mark.parametrize("spec", ["cpu", "cpu:", "mem:1", "cpu:0", "cpu:1,max=0", "cpu:1,min=2"])
def test_parse_admission_errors(spec):
    """
    Anything else is a clear error.
    """
    with pytest.raises(ValueError):
        parse_admission(spec)


@pytest.mark.unit
def test_worker_option_errors():
    """
    --admission and --poll-jobs are checked at startup.
    """
    with pytest.raises(usage.UsageError, match="cpu:REQUIRED"):
        worker_tap.Options().parseOptions(["--app", "pothead.demo:app", "--admission", "cpu:x"])
    with pytest.raises(usage.UsageError, match="wait_for_slot"):
        worker_tap.Options().parseOptions(["--app", "pothead.demo:app", "--poll-jobs"])
    with pytest.raises(usage.UsageError, match="exclude"):
        worker_tap.Options().parseOptions(
            ["--app", "pothead.demo:app", "--poll-jobs", "--admission", "cpu:1"]
        )


class PollingApp:
    """
    A WSGI app with POTHEAD 0.4.3's wait_for_slot contract, recording
    every call.
    """

    def __init__(self) -> None:
        self.events: list = []
        self.lock = threading.Lock()
        self.halt = None

    def record(self, *event) -> None:
        with self.lock:
            self.events.append(event)

    def wait_for_slot(self, halt):
        self.halt = halt
        self.record("wait", threading.current_thread() is not threading.main_thread())
        app = self

        class Callbacks:
            def request_received(self, environ):
                app.record("received", environ["PATH_INFO"])

            def done(self):
                app.record("done")

        return Callbacks()

    def __call__(self, environ, start_response):
        self.record("app", environ["PATH_INFO"])
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]


@pytest.mark.net
@pytest_twisted.ensureDeferred
async def test_wait_for_slot_contract(running_hub):
    """
    wait_for_slot runs off the reactor thread with a halt callable; the
    object it returns hears request_received(environ) before the app runs
    and done() after; each job is admitted anew; halt() turns true on stop.
    """
    app = PollingApp()
    admission = PollAdmission(app.wait_for_slot, reactor, reactor.getThreadPool())
    await running_hub.add_worker(app, slots=1, admission=admission)
    client = Client()
    try:
        for path in ("/one", "/two"):
            response, body = await client.request("GET", running_hub.url + path)
            assert (response.code, body) == (200, b"ok")
    finally:
        await client.close()
    await wait_for(lambda: app.events.count(("done",)) >= 2, what="done() for both jobs")
    jobs = [e for e in app.events if e[0] != "wait"]
    assert jobs[:6] == [
        ("received", "/one"), ("app", "/one"), ("done",),
        ("received", "/two"), ("app", "/two"), ("done",),
    ]
    assert ("wait", True) in app.events
    assert app.halt() is False
    admission.stop()
    assert app.halt() is True


@pytest.mark.unit
def test_gating_compat_lets_one_through_and_halts():
    """
    pothead.gating.wait_for_idle_cpus, as in POTHEAD 0.4.3: the first call
    returns a ticket whose done() frees the slot; a call made while halted
    returns at once.
    """
    from pothead.gating import wait_for_idle_cpus

    wait_for_slot = wait_for_idle_cpus(1000, fixed_delay=0)
    ticket = wait_for_slot(lambda: False)
    assert ticket is not None
    assert wait_for_slot(lambda: True) is None
    ticket.done()
    again = wait_for_slot(lambda: False)
    assert again is not None
    again.done()


class CountingCpu:
    """
    Readings that move by the call, not by the time: each reading of the
    clock is one second later and each reading of idle CPU time 64 seconds
    more, so that each CpuAdmission decision, reading the clock twice, sees
    32 idle CPUs however slowly the threads run.
    """

    def __init__(self) -> None:
        self.seconds = itertools.count().__next__
        self._idle = itertools.count()

    def idle(self) -> float:
        return 64.0 * next(self._idle)


def switching_anywhere_in(filename: str):
    """
    A trace function, for L{threading.settrace}, that lets the interpreter
    switch threads before any bytecode of C{filename}.

    The GIL switches threads only at calls and loops, so C{x += 1} on an
    attribute, or a check and the update it decides, are atomic by accident
    of CPython: a race there shows on a free-threaded interpreter, or once a
    call lands between, but not here.  Calling a Python trace function for
    every opcode puts a switch point between any two of them.
    """

    def each_opcode(frame, event, arg):
        return each_opcode

    def on_call(frame, event, arg):
        if frame.f_code.co_filename != filename:
            return None
        frame.f_trace_opcodes = True
        return each_opcode

    return on_call


def run_threads(count: int, target) -> None:
    """
    Run C{target(barrier)} in C{count} threads, which meet on the barrier
    to start together (and may meet there again), switching as often as
    the interpreter can, with a switch point before every bytecode of the
    admission module; fail on any thread's exception, or if they are not
    all done within a minute.
    """
    together = threading.Barrier(count)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target(together)
        except BaseException as e:
            errors.append(e)
            together.abort()

    threads = [threading.Thread(target=run, daemon=True) for _ in range(count)]
    interval, trace = sys.getswitchinterval(), threading.gettrace()
    sys.setswitchinterval(1e-6)
    threading.settrace(switching_anywhere_in(admission_module.__file__))
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
    finally:
        threading.settrace(trace)
        sys.setswitchinterval(interval)
    assert not any(thread.is_alive() for thread in threads), "threads still running after 60s"
    assert not errors, errors


@pytest.mark.unit
def test_try_admit_and_done_from_many_threads():
    """
    32 threads taking tickets with try_admit and handing them back with
    done(), as wait_for_idle_cpus gates do from the app's threads while the
    reactor returns other tickets: no slot is lost or made up, so the count
    never leaves 0..max, never more tickets are out than max, and once all
    are back nothing runs and the next slot is admitted at once.
    """
    cpu, most = CountingCpu(), 4
    admission = CpuAdmission(
        1.0, cpu, max_slots=most, idle_cpu_seconds=cpu.idle,
        process_cpu_seconds=lambda: 0.0, quota=None, inertia=0.0,
    )
    guard = threading.Lock()
    counts: set[int] = set()
    out = peak = 0

    def cycles(together: threading.Barrier) -> None:
        nonlocal out, peak
        together.wait(timeout=60)
        for _ in range(2000):
            counts.add(admission.running)
            ticket = admission.try_admit()
            if ticket is None:
                continue
            with guard:
                out += 1
                peak = max(peak, out)
            counts.add(admission.running)
            time.sleep(0)  # hold it while others run
            with guard:
                out -= 1
            ticket.done()

    run_threads(32, cycles)
    assert admission.running == 0
    assert min(counts) >= 0 and max(counts) <= most, sorted(counts)
    assert 1 < peak <= most, peak
    ticket = admission.try_admit()
    assert ticket is not None and admission.running == 1
    ticket.done()
    assert admission.running == 0


@pytest.mark.unit
def test_done_from_many_threads_at_once():
    """
    A ticket handed back by several threads at once (the reactor losing
    the slot while the app says done) frees its slot once: 8 threads say
    done() to each of 1000 tickets, all to the same one at the same time.
    """
    cpu = CountingCpu()
    admission = CpuAdmission(
        1.0, cpu, max_slots=1000, idle_cpu_seconds=cpu.idle,
        process_cpu_seconds=lambda: 0.0, quota=None, inertia=0.0,
    )
    tickets = [admission.try_admit() for _ in range(1000)]
    assert None not in tickets and admission.running == 1000

    def hand_back(together: threading.Barrier) -> None:
        for ticket in tickets:
            together.wait(timeout=60)
            ticket.done()

    run_threads(8, hand_back)
    assert admission.running == 0
