"""
More consumers than a service's default descriptor limit, against a real
hub: every one is served or answered 503, none is reset or left without
an answer, and the hub says what it did in a bounded number of lines.

The hub starts as systemd starts a service: a soft descriptor limit of
1024 and a hard one above it (or equal to it).  One worker slot is held
by a gated request while the crowd arrives.
"""

from __future__ import annotations

import os
import resource
import select
import signal
import socket
import subprocess
import sys
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from tests.crowd import crowd, raise_descriptor_limit
from tests.processes import Twistd, start_hub, wait_until

pytestmark = pytest.mark.process

#: Consumers in the crowd: more than the 1024 descriptors a hub starts with.
CROWD = 1500

#: The most log lines the hub may write for the whole crowd, from start
#: to stop; a line per connection would be thousands.
MAX_LOG_LINES = 60

REQUEST = b"GET /?n=%d HTTP/1.1\r\nHost: crowd\r\n\r\n"


@pytest.fixture
def crowd_room():
    """Descriptors for the crowd in this process, or a skip."""
    if not raise_descriptor_limit(CROWD + 200):
        pytest.skip(f"the hard descriptor limit is below {CROWD + 200}")


def can_set_hard_limit(hard: int) -> bool:
    """Whether a child of this process may be given the hard limit C{hard}."""
    current = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if current == resource.RLIM_INFINITY or current >= hard:
        return True
    # Above its own hard limit only with privilege, and the kernel's cap.
    trial = f"import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (1024, {hard}))"
    return subprocess.run([sys.executable, "-c", trial], capture_output=True, timeout=30).returncode == 0


@contextmanager
def busy_hub(tmp_path, hard: int, *argv: str) -> Iterator[tuple[Twistd, int, socket.socket, Path]]:
    """
    A hub with the descriptor limits (1024, C{hard}), a one-slot worker,
    and a request holding the slot until the file C{gate} exists; all
    stopped at the end.

    :return: the hub, the consumer port, the held request's socket, and
        the gate.
    """
    if not can_set_hard_limit(hard):
        pytest.skip(f"cannot give the hub a hard descriptor limit of {hard}")
    hub, (consumer, worker_port) = start_hub(
        tmp_path, "--access-log", "none", *argv, nofile=(1024, hard),
    )
    worker = Twistd(
        "pothead-worker", "--app", "tests.apps.faults:app", "--hub",
        f"tcp:127.0.0.1:{worker_port}", "--slots", "1", cwd=tmp_path,
        env={"POTHEAD_TEST_LOG": str(tmp_path / "calls"), "PYTHONPATH": os.getcwd()},
    )
    gate = tmp_path / "gate"
    held = None
    try:
        hub.wait_for(r"attached to pool default")
        held = socket.create_connection(("127.0.0.1", consumer), timeout=30)
        held.sendall(b"GET /?gate=%s HTTP/1.1\r\nHost: crowd\r\n\r\n" % str(gate).encode())
        wait_until((tmp_path / "calls").exists, what="the held request to reach the worker")
        yield hub, consumer, held, gate
    finally:
        gate.touch()
        if held is not None:
            held.close()
        worker.stop(signal.SIGKILL)
        hub.stop()


def log_lines(hub: Twistd) -> list[str]:
    """The hub's log lines, one per event (continuation lines folded in)."""
    return [line for line in hub.output.splitlines() if line[:4].isdigit()]


def test_crowd_over_the_soft_limit_all_answered(tmp_path, crowd_room):
    """
    With a soft limit of 1024 and a hard one of 8192, the hub raises its
    own limit: of 1500 consumers behind a busy slot, 1000 queue (the
    default --max-queue) and are served once the slot frees, and the
    other 500 get 503 with Retry-After at once.  No reset, no silent
    close, no EMFILE, a few log lines.
    """
    with busy_hub(tmp_path, 8192) as (hub, port, held, gate):
        line = hub.wait_for(r"descriptors: .* limit (\d+) \(was 1024, hard 8192\)")[0]
        assert int(line.group(1)) > 2 * CROWD

        def release_when_refused(outcomes: Counter) -> None:
            # Every consumer the queue cannot take has had its 503: free the slot.
            if outcomes[503] >= CROWD - 1000 and not gate.exists():
                gate.touch()

        consumers = crowd(port, REQUEST % 0, CROWD, timeout=120, waiting=release_when_refused)
        outcomes = Counter(consumer.outcome for consumer in consumers)
        assert outcomes == {200: 1000, 503: CROWD - 1000}, outcomes
        refused = next(c.received for c in consumers if c.outcome == 503)
        assert b"\r\nRetry-After: 5\r\n" in refused
        assert held.recv(65536).startswith(b"HTTP/1.1 200 ")
    lines = log_lines(hub)
    assert "Too many open files" not in hub.output and "EMFILE" not in hub.output, hub.output
    assert len(lines) <= MAX_LOG_LINES, "\n".join(lines)
    assert any("pool default: queue full, answered" in line for line in lines), hub.output


def test_crowd_at_a_low_hard_limit_waits_in_the_backlog(tmp_path, crowd_room):
    """
    With a hard limit of 1024 too, the hub says at start what it needs
    and how to raise the limit, holds as many connections as fit, and
    leaves the rest in the listen backlog: every consumer is served in
    turn, none reset, none refused for want of a descriptor.
    """
    with busy_hub(tmp_path, 1024) as (hub, port, held, gate):
        warning = hub.wait_for(
            r"descriptors: --max-connections \d+ and --max-slots \d+ need (\d+) descriptors "
            r"but the hard limit is 1024; holding (\d+) consumer connections"
        )[0]
        assert int(warning.group(1)) > 1024 and 0 < int(warning.group(2)) < 1024 // 2
        assert "LimitNOFILE=" in hub.output and "ulimit -n" in hub.output

        def release_at_the_limit(outcomes: Counter) -> None:
            if "connections at the limit" in hub.output and not gate.exists():
                gate.touch()

        consumers = crowd(port, REQUEST % 0, CROWD, timeout=180, waiting=release_at_the_limit)
        outcomes = Counter(consumer.outcome for consumer in consumers)
        assert outcomes == {200: CROWD}, outcomes
    lines = log_lines(hub)
    assert "Too many open files" not in hub.output, hub.output
    assert len(lines) <= MAX_LOG_LINES, "\n".join(lines)


def test_idle_connections_make_room_not_busy_ones(tmp_path):
    """
    At --max-connections 3 (and --max-queue 1), with one connection held
    by the worker, one queued and one idle after its 503, a newcomer is
    let in by closing the idle one, cleanly.  With the newcomer half-way
    through its request head, nothing may be closed: the next one waits
    in the backlog until a connection goes idle.
    """
    with busy_hub(
        tmp_path, 8192, "--max-connections", "3", "--max-queue", "1",
    ) as (hub, port, held, gate):
        first = socket.create_connection(("127.0.0.1", port), timeout=30)
        second = socket.create_connection(("127.0.0.1", port), timeout=30)
        for n, connection in enumerate((first, second)):
            connection.sendall(b"GET /?n=%d HTTP/1.1\r\nHost: crowd\r\n\r\n" % n)
        # Whichever came second found the queue full: its 503 leaves it idle.
        answered = select.select([first, second], [], [], 30)[0]
        assert len(answered) == 1, answered
        idle = answered[0]
        queued = second if idle is first else first
        assert idle.recv(65536).startswith(b"HTTP/1.1 503 ")
        hub.wait_for(r"consumer connections at the limit \(3\)")

        newcomer = socket.create_connection(("127.0.0.1", port), timeout=30)
        assert idle.recv(65536) == b"", "the idle connection was not closed for the newcomer"
        hub.wait_for(r"closed 1 idle kept-alive consumer connections for ones waiting")
        newcomer.sendall(b"GET /?n=3 HTTP/1.1\r\n")  # half a head: a request under way

        waiting = socket.create_connection(("127.0.0.1", port), timeout=30)
        waiting.sendall(b"GET /?n=4 HTTP/1.1\r\nHost: crowd\r\n\r\n")
        # No event marks a connection left waiting while the limit is full:
        # a bounded 0.5 s shows that none of these three gets a byte.
        assert select.select([waiting, newcomer, queued], [], [], 0.5)[0] == []

        gate.touch()
        # The held request is answered and its connection goes idle: it
        # is closed for the waiting one, which is then queued and served.
        assert held.recv(65536).startswith(b"HTTP/1.1 200 ")
        assert held.recv(65536) == b""
        assert queued.recv(65536).startswith(b"HTTP/1.1 200 ")
        assert waiting.recv(65536).startswith(b"HTTP/1.1 200 ")
        newcomer.sendall(b"Host: crowd\r\n\r\n")
        assert newcomer.recv(65536).startswith(b"HTTP/1.1 200 ")
