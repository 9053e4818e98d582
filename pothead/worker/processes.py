"""
``--processes N``: N worker processes under one supervising parent.

A worker's slots are threads of one process, and a pure-Python app that
burns CPU runs on one core whatever ``--slots`` says: the GIL lets one
thread run Python at a time.  Processes are what spread such an app over
the cores, as gunicorn's workers do.

The parent loads no app and serves nothing, so that a crash in the app
or a leak in it never takes the parent down, and a reload picks up code
the parent never imported.  It starts N children, each a plain
``twistd -n pothead-worker`` with the parent's options less
``--processes`` (started with C{reactor.spawnProcess}, logging to their
standard output), and:

- re-logs every line a child writes through C{twisted.logger}, naming the
  child (C{child 2 (pid 1234): ...}), so one log holds them all;
- restarts a child that dies with exponential backoff and jitter, so that
  a crash loop neither spins nor restarts every child in one instant; a
  child that stayed up a while starts again at the shortest delay;
- replaces at once a child that exits 0 of its own accord: it has served
  its ``--max-jobs`` and drained, a planned exit (it says so first, so
  that a stop or a reload meanwhile waits for it rather than signal it
  again: a second SIGTERM to a twistd that is already stopping would make
  it exit by the signal);
- on stop (SIGTERM under twistd) sends every child SIGTERM, upon which
  each drains (detaches idle slots, finishes its jobs), waits for them
  all, and exits 0 if they all drained;
- on SIGHUP replaces the children one at a time, each drained before its
  replacement starts and the next drained only once that replacement says
  it is ready, so a code reload never fails a request nor leaves the
  worker with more than one child missing;
- names a directory, in C{$POTHEAD_ADMISSION_DIR}, in which the children
  share ``--admission`` and ``--poll-jobs`` (L{pothead.worker.admission}),
  which keep their meaning for the machine.

Twisted's C{twisted.runner.procmon.ProcessMonitor} restarts processes with
backoff too, but it has no drain on stop (it sends SIGTERM, then SIGKILL
after a fixed timeout, and exits without waiting for a drain to finish),
no rolling replacement, no planned exit and no readiness; this is the
small part of it pothead needs, with those.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import sys
import tempfile
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from pothead.exit import exit_cleanly
from pothead.logs import LogFormatChoice
from pothead.worker.admission import SHARED_DIR_ENV

_log = Logger()

#: Seconds before the first restart of a child that died, before jitter.
RESTART_DELAY = 0.1

#: The longest wait before restarting a child, before jitter (which adds
#: up to half again).
MAX_RESTART_DELAY = 4.0

#: Seconds a child must stay up for its next death to count as its first.
STABLE_AFTER = 10.0

#: Seconds a reload waits for a replacement to say it is ready before it
#: drains the next child all the same.
READY_TIMEOUT = 30.0

#: Seconds a child gets beyond its --drain-timeout to exit once told to
#: stop, before it is killed.
STOP_GRACE = 10.0

#: The descriptor on which a child says it is ready (C{ready}) and that it
#: is draining of its own accord (C{leaving}), a line each, and the
#: environment variable that tells it so.
READY_FD = 3
READY_FD_ENV = "POTHEAD_READY_FD"

#: The environment variable that tells a child its number (1 to N).
CHILD_ENV = "POTHEAD_WORKER_CHILD"

#: twistd's own options for a child: in the foreground, no pid file (its
#: siblings run in the same directory), its log on standard output, which
#: the parent reads.
CHILD_TWISTD_OPTIONS = ["-n", "--pidfile=", "-l", "-"]

#: A line twistd's text log wrote: time, ``[system]``, text; the level is
#: in the system as ``#warn`` (absent for old-style events).
_LOG_LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?[+-]\d{4} (\[[^\]]*?(?:#(\w+))?\] .*)$"
)

#: The longest line kept whole; longer ones are logged in pieces.
MAX_LINE = 64 * 1024


def restart_delay(failures: int, random: Callable[[], float] = random.random) -> float:
    """
    Seconds before restarting a child that has died C{failures} times in
    a row (1 for the first): 0.05-0.15 s, doubling up to 2-6 s.
    """
    return min(RESTART_DELAY * 2 ** (failures - 1), MAX_RESTART_DELAY) * (0.5 + random())


def twistd_command(executable: str = sys.executable,
                   exists: Callable[[str], bool] = os.path.exists) -> list[str]:
    """
    How to run twistd with this very Python: the C{twistd} script installed
    beside it, or, where there is none (a C{pip install --user}), twistd's
    entry point called from C{-c}.

    Not C{python -m twisted}: that is C{twist}, whose options differ; and
    not C{python -m twisted.scripts.twistd}, which has no C{__main__} and
    exits 0 doing nothing.
    """
    script = os.path.join(os.path.dirname(executable), "twistd")
    if exists(script):
        return [executable, script]
    return [executable, "-c", "from twisted.scripts.twistd import run; run()"]


def child_options(config: Any) -> list[str]:
    """
    The worker options a child runs with: the parent's, less
    C{--processes}, each as C{--name=value} so that no value is taken for
    an option.  Every parameter and flag the options class declares is
    passed on (values as the parent resolved them: the slot count, the
    default hub, the application directory made absolute); the token
    file is read again by each child, and C{$POTHEAD_TOKEN} reaches them
    in their environment.
    """
    argv = []
    for name, *_ in config.optParameters:
        value = config[name]
        if value is None or name in ("admin", "log-format"):
            # --admin never reaches a child: N children cannot share one
            # port (and the options refuse it beside --processes).  Nor
            # does --log-format: the parent relays children's lines as its
            # own events, in its format.
            continue
        if name == "app-dir":
            value = os.path.abspath(value)
        argv.append(f"--{name}={value}")
    argv += [f"--{name}" for name, *_ in config.optFlags if config[name]]
    argv += [f"--hub={hub}" for hub in config["hubs"]]
    argv += [f"--pool={pool}" for pool in config["pools"]]
    if config.get("max-jobs"):
        argv.append(f"--max-jobs={config['max-jobs']}")
    return argv


def _describe(reason: BaseException) -> str:
    number = getattr(reason, "signal", None)
    if number:
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = "?"
        return f"was killed by signal {number} ({name})"
    return f"exited {getattr(reason, 'exitCode', '?')}"


class _Waiters:
    """
    Deferreds waiting for the next time something happens.
    """

    def __init__(self) -> None:
        self._waiting: list[Deferred] = []

    def wait(self) -> Deferred:
        waiting: Deferred = Deferred(self._waiting.remove)
        self._waiting.append(waiting)
        return waiting

    def fire(self, value: object = None) -> None:
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(value)


class _Child:
    """
    One of the N places for a child; its process comes and goes.
    """

    def __init__(self, index: int) -> None:
        self.index = index
        #: The process, while one runs.
        self.process: Any = None
        self.pid: int | None = None
        #: Which spawn started it: a reload replaces only those started
        #: before it began.
        self.serial = 0
        self.started = 0.0
        #: Deaths in a row, for the backoff.
        self.failures = 0
        self.restart: Any = None
        #: Whether the parent told it to exit (stop or reload).
        self.told = False
        #: Whether it has said it is ready since it was started.
        self.is_ready = False
        #: Whether it has said it is draining of its own accord.
        self.leaving = False
        #: Whether its last run ended cleanly: exit status 0 (drained), or
        #: SIGTERM before it was ready (it held no slot yet).
        self.clean = False
        self.exited = _Waiters()
        self.ready = _Waiters()


class ChildProtocol(ProcessProtocol):
    """
    The parent's end of one child: its log lines, its readiness, its end.
    """

    def __init__(self, supervisor: ProcessSupervisor, child: _Child) -> None:
        self._supervisor = supervisor
        self._child = child
        self._pid: int | None = None
        self._said = b""
        self._partial = {1: b"", 2: b""}
        # Continuation lines (a traceback's) keep the level of their event.
        self._level = {1: LogLevel.info, 2: LogLevel.warn}

    def connectionMade(self) -> None:
        self._pid = self.transport.pid
        self.transport.closeStdin()
        # Here, not from spawnProcess's return: Twisted may report a child
        # that has already exited before spawnProcess returns.
        self._supervisor.child_started(self._child, self.transport)

    def childDataReceived(self, fd: int, data: bytes) -> None:
        if fd == READY_FD:
            *words, self._said = (self._said + data).split(b"\n")
            for word in words:
                if word == b"ready":
                    self._supervisor.child_ready(self._child)
                elif word == b"leaving":
                    self._supervisor.child_leaving(self._child)
            return
        if fd not in self._partial:
            return
        *lines, rest = (self._partial[fd] + data).split(b"\n")
        if len(rest) > MAX_LINE:
            lines.append(rest)
            rest = b""
        self._partial[fd] = rest
        for line in lines:
            self._relog(fd, line)

    def _relog(self, fd: int, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip("\r")
        if not line.strip():
            return
        match = _LOG_LINE.match(line)
        if match:
            line = match.group(1)
            level = LogLevel.levelWithName(match.group(2)) if match.group(2) in (
                "debug", "info", "warn", "error", "critical"
            ) else LogLevel.info
            self._level[fd] = level
        _log.emit(self._level[fd], "child {index} (pid {pid}): {line}",
                  index=self._child.index, pid=self._pid, line=line)

    def processExited(self, reason: Failure) -> None:
        # Not processEnded: that waits for every pipe to close as well,
        # and a process the app started may hold them open long after the
        # child itself has gone.
        self._supervisor.child_exited(self._child, reason.value)

    def processEnded(self, reason: Failure) -> None:
        for fd, rest in self._partial.items():
            if rest:
                self._relog(fd, rest)
        self._partial = {1: b"", 2: b""}


class ProcessSupervisor(LogFormatChoice, Service):
    """
    Keeps C{count} children running C{command}; see the module's
    docstring for what it does when.

    :param reactor: spawns processes and keeps time.
    :param command: a child's whole command line.
    :param count: how many children.
    :param drain_timeout: the children's --drain-timeout: how long a
        child told to stop may take before it is killed (with
        L{STOP_GRACE} more).
    :param share_admission: whether to make a directory in which the
        children share their admission (C{$POTHEAD_ADMISSION_DIR}).
    :param environ: the environment children inherit (with a few more
        variables).
    :param random: a number in [0, 1) for the backoff's jitter.
    :param install_signal: C{signal.signal}, or a fake in tests.
    """

    def __init__(self, reactor: Any, command: list[str], count: int, drain_timeout: float,
                 share_admission: bool = False, environ: dict[str, str] | None = None,
                 random: Callable[[], float] = random.random,
                 install_signal: Callable[..., Any] = signal.signal) -> None:
        self._reactor = reactor
        self.command = command
        self.children = [_Child(index) for index in range(1, count + 1)]
        self._drain_timeout = drain_timeout
        self._share_admission = share_admission
        self._environ = dict(os.environ if environ is None else environ)
        self._random = random
        self._install_signal = install_signal
        self._previous_hup: Any = None
        self._serial = 0
        self._reload_wanted = False
        self._reloading: Deferred | None = None
        self.stopping = False
        #: The directory the children share admission in, while running.
        self.shared: str | None = None

    def startService(self) -> None:
        super().startService()
        self.stopping = False
        if self._share_admission:
            self.shared = tempfile.mkdtemp(prefix="pothead-worker-")
        self._previous_hup = self._install_signal(signal.SIGHUP, self._on_hup)
        _log.info("starting {n} worker processes", n=len(self.children))
        for child in self.children:
            self._spawn(child)

    def _on_hup(self, number: int, frame: object) -> None:
        # A signal handler may interrupt the reactor anywhere: hand over.
        self._reactor.callFromThread(self.reload)

    def _spawn(self, child: _Child) -> None:
        child.restart = None
        child.told = False
        child.is_ready = False
        child.leaving = False
        child.pid = None
        self._serial += 1
        child.serial = self._serial
        env = {**self._environ, CHILD_ENV: str(child.index), READY_FD_ENV: str(READY_FD)}
        if self.shared is not None:
            env[SHARED_DIR_ENV] = self.shared
        child.started = self._reactor.seconds()
        try:
            self._reactor.spawnProcess(
                ChildProtocol(self, child), self.command[0], self.command, env=env,
                childFDs={0: "w", 1: "r", 2: "r", READY_FD: "r"},
            )
        except OSError as e:
            child.process = None
            self._died(child, f"could not be started ({e})")

    def child_started(self, child: _Child, process: Any) -> None:
        """
        C{child} runs as C{process}.
        """
        child.process, child.pid = process, process.pid
        _log.info("started child {index} (pid {pid})", index=child.index, pid=child.pid)

    def child_ready(self, child: _Child) -> None:
        """
        C{child} says it is ready: its slots are connecting.
        """
        _log.info("child {index} (pid {pid}) is ready", index=child.index, pid=child.pid)
        child.is_ready = True
        child.ready.fire(True)

    def child_leaving(self, child: _Child) -> None:
        """
        C{child} says it is draining of its own accord (--max-jobs).
        """
        child.leaving = True

    def child_exited(self, child: _Child, reason: BaseException) -> None:
        """
        C{child}'s process has exited, for C{reason}
        (L{twisted.internet.error.ProcessDone} or C{ProcessTerminated}).
        """
        child.process = None
        number = getattr(reason, "signal", None)
        # twistd handles SIGTERM only once its reactor runs: a child told
        # to stop before then dies of it, having held no slot.
        child.clean = (getattr(reason, "exitCode", None) == 0 and not number) or (
            child.told and not child.is_ready and number == signal.SIGTERM
        )
        uptime = self._reactor.seconds() - child.started
        what = _describe(reason)
        child.ready.fire(False)
        if child.told or self.stopping:
            _log.info("child {index} (pid {pid}) {what}", index=child.index, pid=child.pid,
                      what=what)
            child.exited.fire(child.clean)
            return
        child.exited.fire(child.clean)
        if child.clean:
            # A planned exit (--max-jobs): it drained first.
            child.failures = 0
            _log.info("child {index} (pid {pid}) exited 0 after {uptime:.1f}s; replacing it",
                      index=child.index, pid=child.pid, uptime=uptime)
            self._spawn(child)
            return
        if uptime >= STABLE_AFTER:
            child.failures = 0
        self._died(child, f"{what} after {uptime:.1f}s")

    def _died(self, child: _Child, what: str) -> None:
        child.failures += 1
        delay = restart_delay(child.failures, self._random)
        _log.warn("child {index} (pid {pid}) {what}; restarting it in {delay:.2f}s",
                  index=child.index, pid=child.pid, what=what, delay=delay)
        child.restart = self._reactor.callLater(delay, self._spawn, child)

    def _signal(self, child: _Child, name: str) -> None:
        try:
            child.process.signalProcess(name)
        except ProcessExitedAlready:
            pass

    async def _until_exited(self, child: _Child, how: str) -> bool:
        """
        Tell C{child} to exit and wait until it has (killing it if it
        takes too long); whether it exited 0.
        """
        if child.process is None:
            return child.clean
        exited = child.exited.wait()
        if not child.told:
            child.told = True
            if not child.leaving:
                self._signal(child, "TERM")
        exited.addTimeout(self._drain_timeout + STOP_GRACE, self._reactor)
        try:
            return await exited
        except Exception:
            pass
        if child.process is None:
            return child.clean
        _log.warn("child {index} (pid {pid}) still running {timeout:.0f}s after SIGTERM "
                  "({how}); killing it",
                  index=child.index, pid=child.pid, timeout=self._drain_timeout + STOP_GRACE,
                  how=how)
        killed = child.exited.wait()
        self._signal(child, "KILL")
        killed.addTimeout(STOP_GRACE, self._reactor)
        try:
            await killed
        except Exception:
            pass
        return False

    def reload(self) -> None:
        """
        Replace every child, one at a time (SIGHUP).
        """
        if self.stopping or not self.running:
            return
        _log.info("reloading: replacing {n} children one at a time", n=len(self.children))
        self._reload_wanted = True
        if self._reloading is None:
            self._reloading = Deferred.fromCoroutine(self._reload())

    async def _reload(self) -> None:
        try:
            # A SIGHUP during a reload asks for another round once this
            # one is done: children it already replaced may predate it.
            while self._reload_wanted and not self.stopping:
                self._reload_wanted = False
                newest = self._serial
                for child in self.children:
                    if self.stopping:
                        return
                    if child.process is not None and child.serial <= newest:
                        await self._replace(child)
                if not self.stopping:
                    _log.info("reload done")
        finally:
            self._reloading = None

    async def _replace(self, child: _Child) -> None:
        _log.info("reloading child {index} (pid {pid}): draining it",
                  index=child.index, pid=child.pid)
        await self._until_exited(child, "reload")
        if self.stopping:
            return
        self._spawn(child)
        if child.process is None:
            return
        ready = child.ready.wait()
        ready.addTimeout(READY_TIMEOUT, self._reactor)
        try:
            came_up = await ready
        except Exception:
            came_up = None
        if not came_up and not self.stopping:
            _log.warn("child {index} did not say it is ready; reloading the next all the same",
                      index=child.index)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self.stopping = True
        self._install_signal(signal.SIGHUP, self._previous_hup or signal.SIG_DFL)
        for child in self.children:
            if child.restart is not None and child.restart.active():
                child.restart.cancel()
            child.restart = None
        running = [child for child in self.children if child.process is not None]
        _log.info("stopping: draining {n} worker processes", n=len(running))
        clean = await gatherResults([
            Deferred.fromCoroutine(self._until_exited(child, "stop")) for child in running
        ])
        if self.shared is not None:
            shutil.rmtree(self.shared, ignore_errors=True)
            self.shared = None
        if all(clean):
            _log.info("all worker processes drained")
            exit_cleanly(self._reactor)
        else:
            _log.warn("{n} worker processes did not drain cleanly", n=clean.count(False))


class ReadyNotice(Service):
    """
    A child's word to its parent, on the descriptor the parent gave it:
    that it is up, once the reactor runs (the app imported, the slots
    started); and, from L{leaving}, that it is draining of its own accord.
    """

    def __init__(self, fd: int, reactor: Any) -> None:
        self._fd = fd
        self._reactor = reactor

    def startService(self) -> None:
        super().startService()
        self._reactor.callWhenRunning(self._tell)

    def _tell(self) -> None:
        self._say(b"ready")

    def leaving(self) -> None:
        """
        Tell the parent this process is draining to exit 0 (--max-jobs),
        before it starts to.
        """
        self._say(b"leaving")

    def _say(self, word: bytes) -> None:
        if self._fd is None:
            return
        try:
            os.write(self._fd, word + b"\n")
        except OSError as e:
            _log.warn("could not tell the parent {word}: {e}", word=word.decode(), e=e)


def ready_notice(reactor: Any, environ: dict[str, str] = os.environ) -> ReadyNotice | None:
    """
    The L{ReadyNotice} of a child of C{--processes}, or L{None} when this
    process is none.  Its descriptor is made non-inheritable, so that the
    app's own subprocesses do not hold the parent's pipe open.
    """
    value = environ.pop(READY_FD_ENV, None)
    if not value:
        return None
    fd = int(value)
    try:
        os.set_inheritable(fd, False)
    except OSError:
        return None
    return ReadyNotice(fd, reactor)


def supervisor(reactor: Any, config: Any) -> ProcessSupervisor:
    """
    The parent of C{config["processes"]} workers, from the worker's
    parsed options.
    """
    command = [*twistd_command(), *CHILD_TWISTD_OPTIONS, "pothead-worker", *child_options(config)]
    return ProcessSupervisor(
        reactor,
        command,
        config["processes"],
        drain_timeout=config["drain-timeout"],
        share_admission=bool(config["admission"] or config["poll-jobs"]),
    )
