"""
The hub's admin port: /metrics, /status.json, /healthz and /readyz against
known traffic through a real hub and worker on 127.0.0.1, and the port
and --log-format json from the command line.
"""

from __future__ import annotations

import json
import re
import socket
import threading

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.threads import deferToThread

from pothead.attach import attach_request
from pothead.hub.admin import hub_admin_site
from pothead.hub.history import INTERVAL, History
from pothead.hub.limits import Limits
from tests.apps.wsgi import gated
from tests.harness import wait_for
from tests.http import Client
from tests.loopback import start_hub
from tests.processes import Twistd, get, get_eventually
from tests.processes import start_hub as start_hub_process


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of C{name} with exactly C{labels} in an exposition."""
    for match in re.finditer(rf"^{name}{{(.*)}} (\S+)$", text, re.M):
        if dict(re.findall(r'(\w+)="([^"]*)"', match.group(1))) == labels:
            return float(match.group(2))
    raise AssertionError(f"no {name} with {labels} in:\n{text}")


class Admin:
    """A hub's admin site on an ephemeral loopback port, in this reactor."""

    def __init__(self, running) -> None:
        self.history = History(running.hub.pools, reactor)
        self.client = Client()
        self._running = running

    async def start(self) -> Admin:
        self.history.startService()
        self.port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            hub_admin_site(self._running.hub, reactor, self.history))
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"
        return self

    async def get(self, path: str):
        return await self.client.request("GET", self.base + path)

    async def metrics(self) -> str:
        response, text = await self.get("/metrics")
        assert response.code == 200
        return text.decode()

    async def status(self) -> dict:
        response, body = await self.get("/status.json")
        assert response.code == 200
        return json.loads(body)

    async def stop(self) -> None:
        await self.client.close()
        await self.port.stopListening()
        self.history.stopService()


@pytest.mark.net
@pytest_twisted.ensureDeferred
async def test_metrics_and_status_follow_the_queue():
    running = await start_hub()
    admin = await Admin(running).start()
    client = Client()
    calls: list = []
    gate = threading.Event()
    try:
        response, body = await admin.get("/readyz")
        assert response.code == 503
        response, body = await admin.get("/healthz")
        assert (response.code, body) == (200, b"ok\n")
        await running.add_worker(gated(calls, gate), slots=2)
        response, body = await admin.get("/readyz")
        assert response.code == 200

        # One busy slot and one idle.
        first = Deferred.fromCoroutine(client.request("GET", f"{running.url}/hold"))
        await wait_for(lambda: len(calls) == 1, what="one job running")
        pool = (await admin.status())["pools"]["default"]
        assert (pool["queued"], pool["idle"], pool["oldest_age_seconds"]) == (0, 1, None)
        assert sorted(slot["state"] for slot in pool["slots"]) == ["busy", "idle"]
        busy = next(slot for slot in pool["slots"] if slot["state"] == "busy")
        assert (busy["job"]["method"], busy["job"]["path"]) == ("GET", "/hold")

        # Both busy, three queued.
        jobs = [first] + [Deferred.fromCoroutine(client.request("GET", f"{running.url}/hold"))
                          for _ in range(4)]
        await wait_for(lambda: running.pool.queued == 3 and len(calls) == 2,
                       what="two jobs running and three queued")
        text = await admin.metrics()
        assert metric(text, "pothead_queue_jobs", pool="default") == 3
        assert metric(text, "pothead_queue_oldest_age_seconds", pool="default") >= 0
        assert metric(text, "pothead_slots", pool="default", state="attached") == 2
        assert metric(text, "pothead_slots", pool="default", state="busy") == 2
        assert metric(text, "pothead_slots", pool="default", state="idle") == 0
        status = await admin.status()
        pool = status["pools"]["default"]
        assert (pool["queued"], pool["idle"], len(pool["slots"])) == (3, 0, 2)
        assert {slot["state"] for slot in pool["slots"]} == {"busy"}
        assert [slot["job"]["path"] for slot in pool["slots"]] == ["/hold", "/hold"]
        assert [slot["jobs_served"] for slot in pool["slots"]] == [0, 0]
        assert all(slot["peer"].startswith("127.0.0.1:") for slot in pool["slots"])
        assert status["limits"]["max_queue"] == running.hub.limits.max_queue
        assert pool["history"]["interval_seconds"] == INTERVAL

        await deferToThread(gate.set)
        results = await DeferredList(jobs, fireOnOneErrback=True, consumeErrors=True)
        assert [response.code for _, (response, _) in results] == [200] * 5
        await wait_for(lambda: running.pool.idle == 2, what="both slots idle again")
        text = await admin.metrics()
        assert metric(text, "pothead_queue_jobs", pool="default") == 0
        assert metric(text, "pothead_slots", pool="default", state="busy") == 0
        assert metric(text, "pothead_slots", pool="default", state="idle") == 2
        assert metric(text, "pothead_queue_wait_seconds_count", pool="default") == 5
        status = await admin.status()
        served = sorted(slot["jobs_served"] for slot in status["pools"]["default"]["slots"])
        assert sum(served) == 5 and served[0] >= 1
    finally:
        gate.set()
        await client.close()
        await admin.stop()
        await running.stop()


def _answers(environ, start_response):
    """A WSGI app: /fail raises, /big answers 1000 bytes, anything else 2."""
    path = environ["PATH_INFO"]
    environ["wsgi.input"].read()
    if path == "/fail":
        raise RuntimeError("the app failed, as asked")
    body = b"x" * 1000 if path == "/big" else b"ok"
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


def _raw_exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


@pytest.mark.net
@pytest_twisted.ensureDeferred
async def test_metrics_count_known_traffic():
    """
    Counts, histogram counts and bytes after a known mix: three answers
    of 2 bytes, one of 1000 bytes to a 5-byte POST, one app failure, one
    consumer gone from the queue, one request refused with a full queue,
    one malformed request and one attach with a wrong token.
    """
    running = await start_hub(token="secret", limits=Limits(max_queue=1))
    admin = await Admin(running).start()
    client = Client()
    try:
        worker = await running.add_worker(_answers, token="secret")
        for _ in range(3):
            response, body = await client.request("GET", f"{running.url}/ok")
            assert (response.code, body) == (200, b"ok")
        response, body = await client.request("POST", f"{running.url}/big", data=b"hello")
        assert (response.code, len(body)) == (200, 1000)
        response, _ = await client.request("GET", f"{running.url}/fail")
        assert response.code == 500

        # A full queue (of one): the second waiting request is refused;
        # then the first leaves.
        calls: list = []
        gate = threading.Event()
        await worker.stopService()
        await wait_for(lambda: not running.pool.slots, what="the worker to go")
        waiting = socket.create_connection(("127.0.0.1", running.consumer_port), timeout=5)
        waiting.sendall(b"GET /waits HTTP/1.1\r\nHost: hub\r\n\r\n")
        await wait_for(lambda: running.pool.queued == 1, what="one job queued")
        response, _ = await client.request("GET", f"{running.url}/refused")
        assert response.code == 503
        waiting.close()
        await wait_for(lambda: running.pool.queued == 0, what="the consumer to leave")
        await running.add_worker(gated(calls, gate), token="secret")

        answer = await deferToThread(
            _raw_exchange, running.consumer_port, b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400 ")
        answer = await deferToThread(
            _raw_exchange, running.worker_port, attach_request("hub", "default", "wrong", "w"))
        assert answer.startswith(b"HTTP/1.1 401 ")

        text = await admin.metrics()
        pool = {"pool": "default"}
        assert metric(text, "pothead_responses_total", **pool, code="200", source="worker") == 4
        assert metric(text, "pothead_responses_total", **pool, code="500", source="worker") == 1
        assert metric(text, "pothead_responses_total", **pool, code="503", source="hub") == 1
        assert metric(text, "pothead_refusals_total", **pool, reason="queue_full") == 1
        assert metric(text, "pothead_consumers_left_total", **pool, stage="queued") == 1
        # Six jobs answered; the refused one never waited.
        assert metric(text, "pothead_request_seconds_count", **pool) == 6
        assert metric(text, "pothead_queue_wait_seconds_count", **pool) == 5
        assert metric(text, "pothead_serve_seconds_count", **pool) == 5
        assert metric(text, "pothead_serve_seconds_bucket", **pool, le="+Inf") == 5
        assert metric(text, "pothead_received_bytes_total", **pool) == 5
        sent = metric(text, "pothead_sent_bytes_total", **pool)
        assert sent >= 3 * 2 + 1000 + len("No worker is available; try again later.\n")
        assert metric(text, "pothead_rejected_requests_total", code="400") == 1
        assert metric(text, "pothead_attach_failures_total", reason="unauthorized") == 1
        assert metric(text, "pothead_queue_jobs", **pool) == 0
        assert metric(text, "pothead_slots", **pool, state="busy") == 0
        assert "pothead_requeues_total" in text and "pothead_retries_total" in text
        tally = running.pool.turned_away
        await wait_for(
            lambda: all(getattr(call.func, "__self__", None) is not tally
                        for call in reactor.getDelayedCalls()),
            what="the queue-full count to be logged")
    finally:
        await client.close()
        await admin.stop()
        await running.stop()


@pytest.mark.net
@pytest_twisted.ensureDeferred
async def test_history_gathers_waits_only_while_kept():
    running = await start_hub()
    history = History(running.hub.pools, reactor)
    metrics = running.pool.metrics
    try:
        assert metrics.recent_waits is None
        history.startService()
        assert metrics.recent_waits == []
    finally:
        history.stopService()
        await running.stop()
    assert metrics.recent_waits is None


@pytest.mark.process
def test_the_admin_port_from_the_command_line(tmp_path, started):
    hub, (consumer, worker_port) = start_hub_process(
        tmp_path, "--admin", "tcp:0:interface=127.0.0.1")
    started.append(hub)
    port = int(hub.wait_for(r"Site starting on (\d+)")[0].group(1))
    status, body = get_eventually(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    assert 'pothead_slots{pool="default",state="attached"} 0.0' in body.decode()
    status, body = get(f"http://127.0.0.1:{port}/")
    assert status == 200 and b"<html" in body.lower()
    assert hub.stop() == 0


@pytest.mark.process
def test_json_log_format(tmp_path, started):
    """
    With --log-format json every line the hub writes is one JSON object,
    the access log's carrying its fields; and every line a worker writes.
    """
    hub, (consumer, worker_port) = start_hub_process(
        tmp_path, "--log-format", "json", "--queue-timeout", "0.2")
    started.append(hub)
    status, _ = get(f"http://127.0.0.1:{consumer}/nobody-serves")
    assert status == 503
    hub.wait_for(r'"status": 503')
    worker = Twistd("pothead-worker", "--app", "pothead.demo:app", "--hub",
                    f"tcp:127.0.0.1:{worker_port}", "--log-format", "json", cwd=tmp_path)
    started.append(worker)
    hub.wait_for(r"attached to pool default")
    assert get_eventually(f"http://127.0.0.1:{consumer}/?width=4&height=2")[0] == 200
    assert worker.stop() == 0
    lines = [json.loads(line) for line in worker.output.splitlines() if line.strip()]
    assert any("draining" in line["text"] for line in lines), lines[-3:]
    assert hub.stop() == 0
    events = [json.loads(line) for line in hub.output.splitlines() if line.strip()]
    assert any("ConsumerFactory starting on" in event["text"] for event in events)
    access = [event for event in events if event.get("log_namespace") == "pothead.access"]
    assert len(access) == 2
    assert access[1]["status"] == 200 and "@127.0.0.1:" in access[1]["worker"]
    assert (access[0]["method"], access[0]["target"], access[0]["status"]) == (
        "GET", "/nobody-serves", 503)
    assert access[0]["worker"] is None and access[0]["queue_seconds"] >= 0.2
    assert access[0]["pool"] == "default"
    assert access[0]["level"] == "info"
