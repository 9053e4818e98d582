"""
The worker's admin port (--admin): /metrics and /healthz, read after known
traffic through a real hub and worker on 127.0.0.1, and from a real
``twistd pothead-worker``.
"""

from __future__ import annotations

import re
import threading

import pytest
import pytest_twisted
from prometheus_client import CollectorRegistry, generate_latest
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface import implementer

from pothead.worker import tap as worker_tap
from pothead.worker.admission import IAdmission
from pothead.worker.flow import FlowControlledWSGIResource, flow_controlled
from pothead.worker.metrics import SLOT_STATES, WorkerCollector, WorkerMetrics
from pothead.worker.service import connect_failure, worker_service
from pothead.worker.slot_server import SlotServer
from tests.harness import InThisThread, wait_for
from tests.http import Client
from tests.loopback import start_hub
from tests.processes import Twistd, get, get_eventually, wait_until
from tests.processes import start_hub as start_hub_process


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of C{name} with C{labels} (in sorted order) in an exposition."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    match = re.search(rf"^{name}{{{re.escape(wanted)}}} (\S+)$", text, re.M)
    assert match, f"no {name}{{{wanted}}} in:\n{text}"
    return float(match.group(1))


def states(text: str) -> dict[str, float]:
    """C{pothead_worker_slots} by state."""
    return {state: metric(text, "pothead_worker_slots", pool="default", state=state)
            for state in SLOT_STATES}


def app(environ, start_response):
    """Answers /ok 200, /teapot 418, raises for /boom, and holds /hold until released."""
    path = environ["PATH_INFO"]
    if path == "/boom":
        raise RuntimeError("the app failed")
    if path == "/hold":
        app.held.wait(10)
    status = "418 I'm a teapot" if path == "/teapot" else "200 OK"
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


class Admin:
    """A worker service's admin site, listening on an ephemeral loopback port."""

    async def start(self, service) -> None:
        self.port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            service.admin_site())
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"
        self.client = Client()

    async def metrics(self) -> str:
        response, body = await self.client.request("GET", self.base + "/metrics")
        assert response.code == 200
        return body.decode()

    async def stop(self) -> None:
        await self.client.close()
        await self.port.stopListening()


@pytest.mark.net
@pytest_twisted.ensureDeferred
async def test_metrics_count_known_traffic():
    """
    After three good jobs, one the app raised for and one 418, /metrics
    says so exactly, shows a held job's slot busy and then every slot
    idle again; /healthz answers ok.
    """
    running = await start_hub()
    service = await running.add_worker(app, slots=2)
    admin = Admin()
    await admin.start(service)
    client = Client()
    app.held = threading.Event()
    try:
        response, body = await client.request("GET", admin.base + "/healthz")
        assert (response.code, body) == (200, b"ok\n")
        text = await admin.metrics()
        assert states(text) == {"busy": 0, "idle": 2, "attaching": 0,
                                "waiting_admission": 0, "detached": 0}
        for path in ("/ok", "/ok", "/boom", "/ok", "/teapot"):
            response, _ = await client.request("GET", running.url + path)
        held = Deferred.fromCoroutine(client.request("GET", running.url + "/hold"))
        await wait_for(lambda: any(slot.state == "busy" for slot in service.slots),
                       what="the held job's slot busy")
        text = await admin.metrics()
        assert states(text)["busy"] == 1
        await deferToThread(app.held.set)
        response, _ = await held
        assert response.code == 200
        await wait_for(lambda: all(slot.state == "idle" for slot in service.slots),
                       what="both slots idle again")
        text = await admin.metrics()
        assert metric(text, "pothead_worker_jobs_total", pool="default", code="200") == 4
        assert metric(text, "pothead_worker_jobs_total", pool="default", code="500") == 1
        assert metric(text, "pothead_worker_jobs_total", pool="default", code="418") == 1
        assert metric(text, "pothead_worker_app_errors_total", pool="default") == 1
        assert metric(text, "pothead_worker_app_seconds_count", pool="default") == 6
        assert metric(text, "pothead_worker_app_seconds_bucket", pool="default", le="+Inf") == 6
        assert metric(text, "pothead_worker_app_seconds_sum", pool="default") > 0
        assert states(text) == {"busy": 0, "idle": 2, "attaching": 0,
                                "waiting_admission": 0, "detached": 0}
        # Each slot was admitted once, at once (no --admission).
        assert metric(text, "pothead_worker_admission_wait_seconds_count", pool="default") == 2
        assert metric(text, "pothead_worker_admission_waits_total", pool="default") == 0
        assert "pothead_worker_attach_failures_total{" not in text
    finally:
        app.held.set()
        await client.close()
        await admin.stop()
        await running.stop()


@pytest.mark.net
@pytest_twisted.ensureDeferred
async def test_attach_failures_are_counted_by_reason():
    """
    A worker with the wrong token counts the hub's 401s as
    C{unauthorized}, one whose hub is not listening counts
    C{connect_refused}; their slots stay detached.
    """
    running = await start_hub(token="right")
    wrong = worker_service(reactor, app, [running.worker_endpoint], 1, token="wrong")
    nowhere = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(Resource()))
    closed = f"tcp:127.0.0.1:{nowhere.getHost().port}"
    await nowhere.stopListening()
    unreachable = worker_service(reactor, app, [closed], 1)
    admins = [Admin(), Admin()]
    try:
        for service, admin in zip((wrong, unreachable), admins, strict=True):
            service.startService()
            await admin.start(service)
        await wait_for(lambda: wrong.metrics.attach_failures.get("unauthorized", 0) >= 2,
                       what="two refused attaches")
        await wait_for(lambda: unreachable.metrics.attach_failures.get("connect_refused", 0) >= 2,
                       what="two refused connects")
        text = await admins[0].metrics()
        assert metric(text, "pothead_worker_attach_failures_total", pool="default",
                      reason="unauthorized") >= 2
        assert metric(text, "pothead_worker_slots", pool="default", state="idle") == 0
        text = await admins[1].metrics()
        assert metric(text, "pothead_worker_attach_failures_total", pool="default",
                      reason="connect_refused") >= 2
        assert metric(text, "pothead_worker_slots", pool="default", state="idle") == 0
    finally:
        for admin in admins:
            await admin.stop()
        await wrong.stopService()
        await unreachable.stopService()
        await running.stop()


class _Ticket:
    def request_received(self, environ: dict) -> None:
        pass

    def done(self) -> None:
        pass


@implementer(IAdmission)
class HeldAdmission:
    """Admits each slot only when the test says so."""

    per_job = False

    def __init__(self) -> None:
        self.waiting: list[Deferred] = []

    def admit(self) -> Deferred:
        waiting: Deferred = Deferred(lambda d: d in self.waiting and self.waiting.remove(d))
        self.waiting.append(waiting)
        return waiting

    def release(self) -> None:
        waiting, self.waiting = self.waiting, []
        for d in waiting:
            d.callback(_Ticket())

    def stop(self) -> None:
        waiting, self.waiting = self.waiting, []
        for d in waiting:
            d.cancel()


@pytest.mark.net
@pytest_twisted.ensureDeferred
async def test_a_slot_waiting_for_admission_shows_and_its_wait_is_counted():
    """
    A connected slot whose admission is withheld is C{waiting_admission};
    once admitted it attaches, and the wait is counted.
    """
    running = await start_hub()
    admission = HeldAdmission()
    service = worker_service(reactor, app, [running.worker_endpoint], 1, admission=admission)
    admin = Admin()
    try:
        service.startService()
        await admin.start(service)
        await wait_for(lambda: admission.waiting, what="the slot asking for admission")
        text = await admin.metrics()
        assert metric(text, "pothead_worker_slots", pool="default", state="waiting_admission") == 1
        assert metric(text, "pothead_worker_admission_wait_seconds_count", pool="default") == 0
        admission.release()
        await wait_for(lambda: running.pool.idle == 1, what="the slot to attach")
        text = await admin.metrics()
        assert metric(text, "pothead_worker_slots", pool="default", state="idle") == 1
        assert metric(text, "pothead_worker_admission_waits_total", pool="default") == 1
        assert metric(text, "pothead_worker_admission_wait_seconds_count", pool="default") == 1
        assert metric(text, "pothead_worker_admission_wait_seconds_sum", pool="default") > 0
    finally:
        await admin.stop()
        await service.stopService()
        await running.stop()


class Upstream(Resource):
    """A sidecar's upstream: /ok answers 200, /broken drops the connection unanswered."""

    isLeaf = True

    def render_GET(self, request):
        if request.path == b"/broken":
            request.channel.transport.abortConnection()
            return NOT_DONE_YET
        return b"ok"


@pytest.mark.net
@pytest_twisted.ensureDeferred
async def test_a_sidecar_counts_its_relayed_jobs():
    """
    With --upstream, the relayed jobs are the jobs: two answered 200, one
    the upstream broke off (answered 502 by the worker) as an app error.
    """
    upstream = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        Site(Upstream(), timeout=None))
    running = await start_hub()
    service = await running.add_worker(
        None, slots=1, upstream=f"http://127.0.0.1:{upstream.getHost().port}")
    admin = Admin()
    await admin.start(service)
    client = Client()
    try:
        codes = []
        for path in ("/ok", "/broken", "/ok"):
            response, _ = await client.request("GET", running.url + path)
            codes.append(response.code)
        assert codes == [200, 502, 200]
        await wait_for(lambda: service.slots[0].state == "idle", what="the slot idle again")
        text = await admin.metrics()
        assert metric(text, "pothead_worker_jobs_total", pool="default", code="200") == 2
        assert metric(text, "pothead_worker_jobs_total", pool="default", code="502") == 1
        assert metric(text, "pothead_worker_app_errors_total", pool="default") == 1
        assert metric(text, "pothead_worker_app_seconds_count", pool="default") == 3
    finally:
        await client.close()
        await admin.stop()
        await running.stop()
        await upstream.stopListening()


def ok(environ, start_response):
    start_response("404 Not Found", [("Content-Length", "2")])
    return [b"no"]


def raises_before_start(environ, start_response):
    raise RuntimeError("no answer")


def raises_after_start(environ, start_response):
    start_response("200 OK", [])
    yield b"half"
    raise RuntimeError("half an answer")


def writes_text(environ, start_response):
    start_response("200 OK", [])
    return ["not bytes"]


class FailsToClose:
    def __init__(self, environ, start_response) -> None:
        start_response("200 OK", [("Content-Length", "2")])

    def __iter__(self):
        return iter([b"ok"])

    def close(self) -> None:
        raise RuntimeError("cannot close")


@pytest.mark.unit
@pytest.mark.parametrize("wsgi, code, failed", [
    (ok, 404, 0),
    (raises_before_start, 500, 1),
    (raises_after_start, 200, 1),
    (writes_text, 500, 1),
    (FailsToClose, 200, 1),
])
def test_each_way_an_app_fails_is_an_app_error(wsgi, code, failed):
    """
    A job is counted by the status it began with, and as an app error if
    the app raised calling, iterating or closing, or wrote text.
    """
    now = InThisThread()
    metrics = WorkerMetrics()
    server = SlotServer(FlowControlledWSGIResource(now, now, flow_controlled(wsgi), metrics),
                        Clock())
    channel = server.buildProtocol(None)
    channel.makeConnection(StringTransport())
    channel.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert (metrics.jobs, metrics.app_errors, metrics.app_time.count) == ({code: 1}, failed, 1)


class Slot:
    def __init__(self, state: str) -> None:
        self.state = state


@pytest.mark.unit
def test_the_exposition_names_and_labels():
    """
    The families are named and labelled as documented: counters end in
    _total, durations in seconds, a job with no response is code "none",
    every state is shown (0 when no slot is in it).
    """
    now = [0.0]
    metrics = WorkerMetrics(now=lambda: now[0])
    now[0] = 0.25
    metrics.job_done(200, 0.0, False)
    metrics.job_done(None, 0.0, True)
    metrics.attach_failed("unauthorized")
    metrics.admitted(0.0, at_once=False)
    registry = CollectorRegistry()
    registry.register(WorkerCollector(metrics, lambda: [Slot("busy"), Slot("idle")], "gpu"))
    text = generate_latest(registry).decode()
    assert metric(text, "pothead_worker_jobs_total", pool="gpu", code="200") == 1
    assert metric(text, "pothead_worker_jobs_total", pool="gpu", code="none") == 1
    assert metric(text, "pothead_worker_app_errors_total", pool="gpu") == 1
    assert metric(text, "pothead_worker_app_seconds_bucket", pool="gpu", le="0.25") == 2
    assert metric(text, "pothead_worker_app_seconds_bucket", pool="gpu", le="0.1") == 0
    assert metric(text, "pothead_worker_app_seconds_sum", pool="gpu") == 0.5
    assert metric(text, "pothead_worker_attach_failures_total", pool="gpu",
                  reason="unauthorized") == 1
    assert metric(text, "pothead_worker_admission_waits_total", pool="gpu") == 1
    assert metric(text, "pothead_worker_admission_wait_seconds_count", pool="gpu") == 1
    assert {state: metric(text, "pothead_worker_slots", pool="gpu", state=state)
            for state in SLOT_STATES} == {"busy": 1, "idle": 1, "attaching": 0,
                                          "waiting_admission": 0, "detached": 0}


@pytest.mark.unit
def test_connect_failures_have_bounded_reasons():
    """
    A failed connect is named by kind; one the worker cancelled itself
    (stopping) is not a failure.
    """
    from twisted.internet import error
    from twisted.internet.defer import CancelledError

    assert connect_failure(Failure(error.ConnectionRefusedError())) == "connect_refused"
    assert connect_failure(Failure(error.TimeoutError())) == "connect_timeout"
    assert connect_failure(Failure(error.DNSLookupError())) == "dns"
    assert connect_failure(Failure(error.ConnectError())) == "connect_failed"
    assert connect_failure(Failure(CancelledError())) is None
    assert connect_failure(Failure(error.ConnectingCancelledError(None))) is None


@pytest.mark.unit
def test_admin_is_a_listener_of_the_worker_service(monkeypatch):
    """--admin adds one listener to the worker's service; without it there is none."""
    monkeypatch.delenv("POTHEAD_TOKEN", raising=False)

    def listeners(*argv: str) -> list:
        options = worker_tap.Options()
        options.parseOptions(["--app", "pothead.demo:app", *argv])
        return [child for child in worker_tap.makeService(options)
                if isinstance(child, StreamServerEndpointService)]

    assert listeners() == []
    assert len(listeners("--admin", "tcp:0:interface=127.0.0.1")) == 1


@pytest.mark.process
def test_the_worker_admin_port_from_the_command_line(tmp_path, started):
    """
    ``twistd pothead-worker --admin`` serves /metrics and /healthz; a job
    through the hub shows in them.
    """
    hub, (consumer, worker_port) = start_hub_process(tmp_path)
    started.append(hub)
    worker = Twistd(
        "pothead-worker", "--app", "pothead.demo:app",
        "--hub", f"tcp:127.0.0.1:{worker_port}", "--admin", "tcp:0:interface=127.0.0.1",
        cwd=tmp_path,
    )
    started.append(worker)
    port = int(worker.wait_for(r"Site starting on (\d+)")[0].group(1))
    base = f"http://127.0.0.1:{port}"
    assert get_eventually(base + "/healthz") == (200, b"ok\n")

    def idle() -> bool:
        return 'pothead_worker_slots{pool="default",state="idle"} 1.0' in get(
            base + "/metrics")[1].decode()

    wait_until(idle, what="the worker's slot idle")
    assert get(f"http://127.0.0.1:{consumer}/")[0] == 200
    # The consumer can have the response's last byte before the app's
    # thread has returned, and the job is counted then.
    wait_until(idle, what="the worker's slot idle after the job")
    status, body = get(base + "/metrics")
    assert status == 200
    assert metric(body.decode(), "pothead_worker_jobs_total", pool="default", code="200") == 1
    assert worker.stop() == 0
    assert hub.stop() == 0
