"""
Faults that are about processes, with real ``twistd`` processes: a worker
killed mid-request, a rolling restart of every worker under load, and a
hub stopped with work in hand.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.processes import (
    get,
    invocations,
    read_by_server,
    start_hub,
    start_worker,
    wait_until,
)

pytestmark = pytest.mark.process

@pytest.mark.parametrize("method, expected", [("POST", 502), ("GET", 200)])
def test_worker_killed_mid_request(tmp_path, started, method, expected):
    """
    A worker killed with SIGKILL mid-request: a POST gets 502 at once (it
    may have been processed), a GET is given to another worker, which
    answers it at once; the other worker keeps serving.
    """
    log = tmp_path / "calls"
    hub, (consumer, worker_port) = start_hub(tmp_path)
    started.append(hub)
    doomed = start_worker(tmp_path, worker_port, log)
    started.append(doomed)
    hub.wait_for(r"attached to pool default", count=1)
    survivor = start_worker(tmp_path, worker_port, log, sleep_scale=0)
    started.append(survivor)
    hub.wait_for(r"attached to pool default", count=2)

    with ThreadPoolExecutor(1) as pool:
        data = b"x" if method == "POST" else None
        pending = pool.submit(get, f"http://127.0.0.1:{consumer}/slow?sleep=30", data=data, method=method)
        wait_until(lambda: len(invocations(log)) == 1, what="the request to reach the first worker")
        killed_at = time.monotonic()
        doomed.process.kill()
        status, _ = pending.result(timeout=20)
        elapsed = time.monotonic() - killed_at
    print(f"{method} answered {status} {elapsed:.3f}s after the kill")
    assert status == expected
    assert elapsed < 5, f"{status} took {elapsed:.2f}s after the kill"
    assert get(f"http://127.0.0.1:{consumer}/after")[0] == 200


def test_rolling_restart_loses_nothing(tmp_path, started):
    """
    Every one of three workers is restarted in turn (SIGTERM, then a new
    one) under steady GET and POST load: no consumer request fails, and the
    app ran exactly as often as consumers got answers.
    """
    log = tmp_path / "calls"
    hub, (consumer, worker_port) = start_hub(tmp_path)
    started.append(hub)
    workers = []
    for _ in range(3):
        workers.append(start_worker(tmp_path, worker_port, log, "--slots", "2"))
    started.extend(workers)
    hub.wait_for(r"attached to pool default", count=6)

    stop = threading.Event()
    outcomes: list[int] = []
    lock = threading.Lock()

    def load(index: int) -> None:
        deadline = time.monotonic() + 90
        sent = 0
        while not stop.is_set() and time.monotonic() < deadline and sent < 2000:
            method = "POST" if (sent + index) % 2 else "GET"
            try:
                status, _ = get(
                    f"http://127.0.0.1:{consumer}/job?sleep=0.02",
                    data=b"payload" if method == "POST" else None,
                    method=method,
                )
            except OSError as e:
                status = repr(e)
            with lock:
                outcomes.append(status)
            sent += 1

    def answered() -> int:
        with lock:
            return len(outcomes)

    threads = [threading.Thread(target=load, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: answered() >= 10, what="the load to be under way")
        attached = 6
        for worker in workers:
            assert worker.stop(signal.SIGTERM) == 0, worker.output
            replacement = start_worker(tmp_path, worker_port, log, "--slots", "2")
            started.append(replacement)
            attached += 2
            hub.wait_for(r"attached to pool default", count=attached)
            # Let the load run on before the next restart.
            so_far = answered()
            wait_until(lambda so_far=so_far: answered() >= so_far + 10,
                       what="load after the restart")
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    failures = [status for status in outcomes if status != 200]
    print(f"rolling restart: {len(outcomes)} requests, {len(failures)} failed")
    assert not failures, f"{len(failures)} of {len(outcomes)} failed: {failures[:10]}"
    assert len(outcomes) > 50
    assert len(invocations(log)) == len(outcomes)


def read_to_end(connection: socket.socket) -> bytes:
    """Everything C{connection} receives until the other end closes it."""
    received = b""
    while chunk := connection.recv(65536):
        received += chunk
    return received


def test_hub_stop_finishes_work_in_hand(tmp_path, started):
    """
    A hub told to stop (SIGTERM) answers the requests it has queued and in
    progress, then exits 0.
    """
    log = tmp_path / "calls"
    hub, (consumer, worker_port) = start_hub(tmp_path)
    started.append(hub)
    started.append(start_worker(tmp_path, worker_port, log))
    hub.wait_for(r"attached to pool default")
    connections = []
    try:
        for i in range(3):
            connection = socket.create_connection(("127.0.0.1", consumer), timeout=20)
            connections.append(connection)
            connection.sendall(
                b"GET /%d?sleep=0.4 HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n" % i
            )
        # One request in progress, and the other two read by the hub: queued.
        wait_until(lambda: len(invocations(log)) == 1 and read_by_server(consumer) == 3,
                   what="the first request to start and the hub to read all three")
        assert hub.stop(signal.SIGTERM) == 0, hub.output
        answers = [read_to_end(connection) for connection in connections]
    finally:
        for connection in connections:
            connection.close()
    assert "finishing 3 jobs" in hub.output, hub.output
    assert [answer.split(b"\r\n", 1)[0] for answer in answers] == [b"HTTP/1.1 200 OK"] * 3
    assert len(invocations(log)) == 3


def test_drain_timeout_cuts_and_exits(tmp_path, started):
    """
    A worker whose drain times out cuts the slot still busy (its consumer
    gets 502 at once, not at the request timeout) and exits once the app's
    call returns; it does not hang.
    """
    log = tmp_path / "calls"
    hub, (consumer, worker_port) = start_hub(tmp_path)
    started.append(hub)
    worker = start_worker(tmp_path, worker_port, log, "--drain-timeout", "0.5")
    started.append(worker)
    hub.wait_for(r"attached to pool default")
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(get, f"http://127.0.0.1:{consumer}/slow?sleep=3", data=b"x")
        wait_until(lambda: len(invocations(log)) == 1, what="the request to start")
        stopped_at = time.monotonic()
        worker.process.send_signal(signal.SIGTERM)
        status, _ = pending.result(timeout=20)
        answered = time.monotonic() - stopped_at
        worker.process.wait(20)
        exited = time.monotonic() - stopped_at
    print(f"drain timeout: consumer answered {status} after {answered:.2f}s, exit after {exited:.2f}s")
    assert status == 502
    assert answered < 3
    assert worker.process.returncode != 0
    worker.wait_for(r"drain timed out")


def test_consumer_that_stops_reading_releases_the_worker(tmp_path, started):
    """
    A consumer that asks for a large response and stops reading holds the
    worker back (backpressure) only for the stall timeout: then both are
    cut off, and the worker's slot serves the next consumer.
    """
    log = tmp_path / "calls"
    hub, (consumer, worker_port) = start_hub(tmp_path, "--stall-timeout", "1")
    started.append(hub)
    started.append(start_worker(tmp_path, worker_port, log, "--slots", "1"))
    hub.wait_for(r"attached to pool default", count=1)
    with socket.create_connection(("127.0.0.1", consumer), timeout=10) as stuck:
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.sendall(b"GET /big?bytes=100000000 HTTP/1.1\r\nHost: hub\r\n\r\n")
        hub.wait_for(r"stalled: nothing from worker .* for 1s; both cut off")
        hub.wait_for(r"attached to pool default", count=2)
        assert get(f"http://127.0.0.1:{consumer}/after")[0] == 200
