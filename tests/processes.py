"""
Subprocesses for end-to-end tests: real ``twistd`` processes started from
the installed console script, as a user would, or any other command; their
output read line by line for readiness, and bounded waits on what they do.

Tests that start any of these are C{process} tests.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

#: The twistd console script installed next to this Python.
TWISTD = str(Path(sys.executable).parent / "twistd")

#: Upper bound, in seconds, on any wait for a process in these tests.
PROCESS_WAIT = 20.0


class Process:
    """
    A subprocess whose output (stdout and stderr together) is collected
    line by line, as it runs, by a thread of its own.
    """

    def __init__(self, argv, cwd: Path | None = None, env: dict | None = None,
                 nofile: tuple[int, int] | None = None) -> None:
        """
        :param nofile: the soft and hard descriptor limits to start it
            with, as a service manager would set them.
        """
        self.argv = list(argv)
        self.process = subprocess.Popen(
            self.argv,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            preexec_fn=None if nofile is None else (
                lambda: resource.setrlimit(resource.RLIMIT_NOFILE, nofile)
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_lines(self, condition, what: str, timeout: float = PROCESS_WAIT):
        """
        Wait until C{condition(lines)} returns something true, and return
        it; fail after C{timeout}, or at once if the process has ended
        without it.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                result = condition(self.lines)
                if result:
                    return result
                left = deadline - time.monotonic()
                if left <= 0 or (self.process.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"{what} not seen in output of {self.argv}:\n{self.output}")
                self._changed.wait(min(left, 0.1))

    def wait_for(self, pattern: str, count: int = 1, timeout: float = PROCESS_WAIT) -> list[re.Match]:
        """
        Wait until C{count} output lines match C{pattern}.

        :return: the matches.
        """
        regex = re.compile(pattern)

        def matched(lines: list[str]) -> list[re.Match] | None:
            matches = [m for m in map(regex.search, lines) if m]
            return matches if len(matches) >= count else None

        return self.wait_for_lines(matched, f"{pattern!r} x{count}", timeout)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """
        Send C{sig} and wait for the process to end (killing it if it will
        not); return its exit code.
        """
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(PROCESS_WAIT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(PROCESS_WAIT)
        self._reader.join(PROCESS_WAIT)
        return self.process.returncode


class Twistd(Process):
    """
    One ``twistd -n`` process whose output is collected as it runs.
    """

    def __init__(self, *argv: str, cwd: Path, env: dict | None = None,
                 nofile: tuple[int, int] | None = None) -> None:
        super().__init__([TWISTD, "-n", "--pidfile=", "-l", "-", *argv], cwd=cwd, env=env,
                         nofile=nofile)


def start_hub(cwd: Path, *argv: str, env: dict | None = None, ports: tuple[int, int] | None = None,
              nofile: tuple[int, int] | None = None):
    """
    A hub on loopback (ephemeral ports unless C{ports} is given), with
    the descriptor limits C{nofile} if given.

    :return: the process and its C{(consumer_port, worker_port)}.
    """
    consumer, worker = ports or (0, 0)
    hub = Twistd(
        "pothead-hub",
        "--consumer", f"tcp:{consumer}:interface=127.0.0.1",
        "--worker", f"tcp:{worker}:interface=127.0.0.1",
        *argv,
        cwd=cwd,
        env=env,
        nofile=nofile,
    )
    consumer_port = int(hub.wait_for(r"ConsumerFactory starting on (\d+)")[0].group(1))
    worker_port = int(hub.wait_for(r"WorkerPortFactory starting on (\d+)")[0].group(1))
    return hub, (consumer_port, worker_port)


def get(url: str, timeout: float = 10.0, **kwargs) -> tuple[int, bytes]:
    """
    A blocking HTTP request; return status and body, errors included.
    """
    request = urllib.request.Request(url, **kwargs)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def get_eventually(url: str, timeout: float = PROCESS_WAIT) -> tuple[int, bytes]:
    """
    Retry a GET until it answers 200 or C{timeout} passes.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            status, body = get(url, timeout=2.0)
            if status == 200:
                return status, body
            last = status
        except OSError as e:
            last = e
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer 200 within {timeout}s; last: {last!r}")


def wait_until(condition, timeout: float = PROCESS_WAIT, what: str = "condition") -> None:
    """
    Poll C{condition} every 20 ms until it is true; fail after C{timeout}.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def read_by_server(port: int) -> int:
    """
    How many connections to local TCP port C{port} the server has accepted
    and read everything from, by Linux's /proc/net/tcp: an established
    socket has an inode once accepted, and its receive queue holds what
    the server has yet to read.
    """
    count = 0
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            local, state, queues, inode = fields[1], fields[3], fields[4], fields[9]
            if (int(local.rsplit(":", 1)[1], 16) == port and state == "01" and inode != "0"
                    and int(queues.split(":")[1], 16) == 0):
                count += 1
    return count


#: The repository, where a worker finds the test apps (C{tests.apps}).
ROOT = Path(__file__).parent.parent


def start_worker(tmp_path: Path, worker_port: int, log: Path, *argv: str,
                 sleep_scale: float = 1) -> Twistd:
    """
    A worker serving L{tests.apps.faults}, which notes every call in
    C{log} and sleeps C{sleep_scale} times what a request asks.
    """
    return Twistd(
        "pothead-worker", "--app", "tests.apps.faults:app", "--app-dir", str(ROOT),
        "--hub", f"tcp:127.0.0.1:{worker_port}", *argv,
        cwd=tmp_path,
        env={"POTHEAD_TEST_LOG": str(log), "POTHEAD_TEST_SLEEP_SCALE": str(sleep_scale)},
    )


def invocations(log: Path) -> list[str]:
    """The calls a L{start_worker} app noted, one line each: pid, method, path."""
    return log.read_text().splitlines() if log.exists() else []
