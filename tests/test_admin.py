"""
The hub's admin port: /metrics, /status.json, /healthz and /readyz against
a known state of a real hub and worker on 127.0.0.1.
"""

from __future__ import annotations

import json
import re
import threading

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.threads import deferToThread

from pothead.hub.admin import admin_site
from tests.harness import wait_for
from tests.http import Client
from tests.loopback import start_hub
from tests.processes import get_eventually
from tests.processes import start_hub as start_hub_process
from tests.test_late_binding import gated


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of C{name} with C{labels} in an exposition."""
    wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
    match = re.search(rf"^{name}{{{re.escape(wanted)}}} (\S+)$", text, re.M)
    assert match, f"no {name}{{{wanted}}} in:\n{text}"
    return float(match.group(1))


@pytest.mark.net
@pytest_twisted.ensureDeferred
async def test_metrics_and_status_follow_the_queue():
    running = await start_hub()
    admin = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        admin_site(running.hub, reactor))
    base = f"http://127.0.0.1:{admin.getHost().port}"
    client = Client()
    calls: list = []
    gate = threading.Event()
    try:
        response, body = await client.request("GET", base + "/readyz")
        assert response.code == 503
        response, body = await client.request("GET", base + "/healthz")
        assert (response.code, body) == (200, b"ok\n")
        await running.add_worker(gated(calls, gate), slots=2)
        response, body = await client.request("GET", base + "/readyz")
        assert response.code == 200
        jobs = [Deferred.fromCoroutine(client.request("GET", f"{running.url}/hold"))
                for _ in range(5)]
        await wait_for(lambda: running.pool.queued == 3 and len(calls) == 2,
                       what="two jobs running and three queued")
        response, text = await client.request("GET", base + "/metrics")
        text = text.decode()
        assert metric(text, "pothead_queue_jobs", pool="default") == 3
        assert metric(text, "pothead_queue_oldest_age_seconds", pool="default") >= 0
        assert metric(text, "pothead_slots", pool="default", state="attached") == 2
        assert metric(text, "pothead_slots", pool="default", state="busy") == 2
        assert metric(text, "pothead_slots", pool="default", state="idle") == 0
        response, body = await client.request("GET", base + "/status.json")
        status = json.loads(body)
        pool = status["pools"]["default"]
        assert (pool["queued"], pool["idle"], len(pool["slots"])) == (3, 0, 2)
        assert {slot["state"] for slot in pool["slots"]} == {"busy"}
        assert [slot["job"]["path"] for slot in pool["slots"]] == ["/hold", "/hold"]
        assert all(slot["peer"].startswith("127.0.0.1:") for slot in pool["slots"])
        assert status["limits"]["max_queue"] == running.hub.limits.max_queue
        await deferToThread(gate.set)
        results = await DeferredList(jobs, fireOnOneErrback=True, consumeErrors=True)
        assert [response.code for _, (response, _) in results] == [200] * 5
        await wait_for(lambda: running.pool.idle == 2, what="both slots idle again")
        response, text = await client.request("GET", base + "/metrics")
        text = text.decode()
        assert metric(text, "pothead_queue_jobs", pool="default") == 0
        assert metric(text, "pothead_slots", pool="default", state="busy") == 0
        assert metric(text, "pothead_slots", pool="default", state="idle") == 2
    finally:
        gate.set()
        await client.close()
        await running.stop()
        await admin.stopListening()


@pytest.mark.process
def test_the_admin_port_from_the_command_line(tmp_path, started):
    hub, (consumer, worker_port) = start_hub_process(
        tmp_path, "--admin", "tcp:0:interface=127.0.0.1")
    started.append(hub)
    port = int(hub.wait_for(r"Site starting on (\d+)")[0].group(1))
    status, body = get_eventually(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    assert 'pothead_slots{pool="default",state="attached"} 0.0' in body.decode()
    assert hub.stop() == 0
