"""
Pools routed by host and path (issue 19): the routing table, pool
definitions, each pool's own limits, 404 for what no pool serves, and a
slot serving several pools taking the oldest job first, never two.
"""

from __future__ import annotations

import threading
import time

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from pothead.attach import attach_request
from pothead.bidding import HOLD, TAKE, bid_answer, verdict_notice
from pothead.hub.admin import pool_status
from pothead.hub.routing import (
    PoolSpec,
    PoolSpecError,
    Router,
    check_pools,
    parse_pool,
    parse_pools_file,
)
from tests.harness import HubHarness, status, wait_for
from tests.http import Client
from tests.loopback import start_hub
from tests.processes import get, invocations, start_worker
from tests.processes import start_hub as start_hub_process

SERVICES = [
    parse_pool("thumbs:host=thumbs.example.com,*.thumbs.example.com"),
    parse_pool("transcode:host=media.example.com:prefix=/transcode"),
    parse_pool("models:prefix=/v1/models"),
    parse_pool("models-big:prefix=/v1/models/big"),
    parse_pool("wild:host=*.example.com"),
    parse_pool("deep:host=*.a.example.com"),
    parse_pool("default"),
]


@pytest.mark.unit
@pytest.mark.parametrize("host, target, pool", [
    # Exact host; its port and case ignored; a trailing dot too.
    (b"thumbs.example.com", b"/x.jpg", "thumbs"),
    (b"Thumbs.Example.COM:8080", b"/x.jpg?w=3", "thumbs"),
    (b"thumbs.example.com.", b"/", "thumbs"),
    # A wildcard matches subdomains, not the name itself.
    (b"eu.thumbs.example.com", b"/x", "thumbs"),
    (b"other.example.com", b"/x", "wild"),
    (b"example.com", b"/x", "default"),
    # The longest wildcard suffix wins.
    (b"b.a.example.com", b"/x", "deep"),
    # Host and prefix: the prefix must match whole segments.
    (b"media.example.com", b"/transcode", "transcode"),
    (b"media.example.com", b"/transcode/job?x=1", "transcode"),
    (b"media.example.com", b"/transcoder", "wild"),
    # Longest prefix, host-less pools matching every host.
    (b"api.internal", b"/v1/models/big/run", "models-big"),
    (b"api.internal", b"/v1/models/small", "models"),
    (b"api.internal", b"/v1/modelsx", "default"),
    # A longer prefix beats a closer host.
    (b"thumbs.example.com", b"/v1/models/x", "models"),
    # No Host at all (HTTP/1.0): only host-less pools.
    (None, b"/v1/models", "models"),
    (None, b"/elsewhere", "default"),
    # IPv6 literal with a port.
    (b"[::1]:8080", b"/x", "default"),
])
def test_routing_table(host, target, pool):
    router = Router(SERVICES, "default")
    assert router.route(host, target).name == pool


@pytest.mark.unit
def test_no_default_means_no_pool():
    router = Router(SERVICES[:2], None)
    assert router.route(b"nowhere.example.com", b"/") is None
    assert router.route(b"thumbs.example.com", b"/").name == "thumbs"


@pytest.mark.unit
@pytest.mark.parametrize("spec, target, rest", [
    ("api:prefix=/api:strip", b"/api/x?q=1", b"/x?q=1"),
    ("api:prefix=/api:strip", b"/api", b"/"),
    ("api:prefix=/api:strip", b"/api?q", b"/?q"),
    ("api:prefix=/api:strip", b"/api/", b"/"),
    ("api:prefix=/api", b"/api/x", None),
    # The default pool gets what no pool matches: as it came.
    ("default:prefix=/app:strip", b"/xyzzy/page?q=1", None),
    ("default:prefix=/app:strip", b"/application", None),
])
def test_strip(spec, target, rest):
    assert parse_pool(spec).worker_target(target) == rest


@pytest.mark.unit
def test_pool_definitions():
    spec = parse_pool("api:host=A.example.com,*.b.example.com:prefix=/api/:strip:max-queue=5:"
                      "queue-timeout=2.5:request-timeout=30")
    assert spec == PoolSpec("api", ("a.example.com", "*.b.example.com"), "/api", True)
    assert spec.limits == {"max_queue": 5, "queue_timeout": 2.5, "request_timeout": 30.0}
    assert parse_pool("plain") == PoolSpec("plain")


@pytest.mark.unit
@pytest.mark.parametrize("text, message", [
    ("", "pool name ''"),
    ("bad name", "pool name 'bad name'"),
    ("a,b", "pool name 'a,b'"),
    ("p:prefix=api", "must be a path starting with /"),
    ("p:host=", "'host=' is not one of"),
    ("p:host=a b", "is not a host name"),
    ("p:max-queue=0", "max-queue must be above 0"),
    ("p:queue-timeout=soon", "is not a number"),
    ("p:colour=red", "'colour=red' is not one of host=, prefix=, strip, max-queue="),
    ("p:strip", "strip needs a prefix="),
    ("p:prefix=/a:prefix=/b", "prefix given twice"),
])
def test_bad_pool_definitions(text, message):
    with pytest.raises(PoolSpecError, match=message.replace("(", r"\(")):
        parse_pool(text)


@pytest.mark.unit
def test_pools_that_cannot_be_told_apart_are_refused():
    with pytest.raises(PoolSpecError, match="defined twice"):
        check_pools([parse_pool("a"), parse_pool("a:prefix=/x")])
    with pytest.raises(PoolSpecError, match="a and b both serve host h.example and prefix /x"):
        check_pools([parse_pool("a:host=h.example:prefix=/x"),
                     parse_pool("b:host=h.example:prefix=/x/")])
    check_pools([parse_pool("a:host=h.example:prefix=/x"), parse_pool("b:prefix=/x")])


@pytest.mark.unit
def test_pools_file(tmp_path):
    path = tmp_path / "pools"
    path.write_text("# three services\nthumbs:host=thumbs.example\n\n  render:prefix=/render\n")
    assert [spec.name for spec in parse_pools_file(str(path))] == ["thumbs", "render"]
    path.write_text("ok\nbroken:nope\n")
    with pytest.raises(PoolSpecError, match=r"line 2: pool broken: 'nope'"):
        parse_pools_file(str(path))
    with pytest.raises(PoolSpecError, match="No such file"):
        parse_pools_file(str(tmp_path / "missing"))


def request(host: bytes, target: bytes = b"/") -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, host)


@pytest.mark.unit
def test_requests_queue_in_their_pools_with_their_limits():
    """
    A full queue in one pool refuses its own requests only; a request no
    pool serves is 404 with a body naming no internals.
    """
    harness = HubHarness(pools=[parse_pool("small:host=small.example:max-queue=1"),
                                parse_pool("big:host=big.example")])
    small, big = harness.hub.pools["small"], harness.hub.pools["big"]
    harness.consumer(request(b"small.example"))
    _, refused = harness.consumer(request(b"small.example"))
    assert status(refused) == b"HTTP/1.1 503 Service Unavailable"
    answers = [harness.consumer(request(b"big.example"))[1] for _ in range(3)]
    assert all(transport.value() == b"" for transport in answers)
    assert (small.queued, big.queued) == (1, 3)
    assert small.metrics.refusals == {"queue_full": 1} and not big.metrics.refusals
    _, nowhere = harness.consumer(request(b"nowhere.example"))
    assert status(nowhere) == b"HTTP/1.1 404 Not Found"
    assert nowhere.value().endswith(b"\r\n\r\nNothing is served here.\n")
    assert harness.hub.metrics.rejected == {404: 1}
    harness.clock.advance(1.0)  # the 404's log line, counted


@pytest.mark.unit
def test_each_pool_keeps_its_own_timeouts():
    harness = HubHarness(pools=[parse_pool("quick:prefix=/q:queue-timeout=1"),
                                parse_pool("default")], queue_timeout=10)
    _, quick = harness.consumer(request(b"h", b"/q/1"))
    _, slow = harness.consumer(request(b"h", b"/s"))
    harness.clock.advance(1)
    assert status(quick) == b"HTTP/1.1 503 Service Unavailable"
    assert slow.value() == b""
    harness.clock.advance(9)
    assert status(slow) == b"HTTP/1.1 503 Service Unavailable"


@pytest.mark.unit
def test_strip_changes_what_the_worker_sees_only():
    harness = HubHarness(pools=[parse_pool("api:prefix=/api:strip"), parse_pool("default")])
    slot, worker = harness.worker("api")
    harness.consumer(request(b"h", b"/api/v2/x?y=1"))
    assert worker.value().startswith(b"GET /v2/x?y=1 HTTP/1.1\r\n")
    slot, worker = harness.worker("default")
    harness.consumer(request(b"h", b"/apix"))
    assert worker.value().startswith(b"GET /apix HTTP/1.1\r\n")


@pytest.mark.unit
def test_an_attach_to_an_unknown_pool_names_the_known_ones():
    harness = HubHarness(pools=[parse_pool("a"), parse_pool("b")])
    _, transport = harness.worker("c")
    answer = transport.value()
    assert answer.startswith(b"HTTP/1.1 404 ")
    assert b"no pool named 'c' (pools: a, b)" in answer
    _, transport = harness.worker(["a", "c"])
    assert transport.value().startswith(b"HTTP/1.1 404 ")
    assert harness.hub.metrics.attach_failures == {"unknown_pool": 2}


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.mark.unit
def test_a_slot_of_two_pools_takes_the_oldest_job_first():
    harness = HubHarness(pools=[parse_pool("a:prefix=/a"), parse_pool("b:prefix=/b")])
    a, b = harness.hub.pools["a"], harness.hub.pools["b"]
    _, first_b = harness.consumer(request(b"h", b"/b/1"))
    harness.clock.advance(1)
    _, first_a = harness.consumer(request(b"h", b"/a/1"))
    harness.clock.advance(1)
    _, second_b = harness.consumer(request(b"h", b"/b/2"))
    slot, worker = harness.worker(["a", "b"], keep_sent=True)
    (attached,) = a.slots
    served = []
    for consumer in (first_b, first_a, second_b):
        served.append(worker.value().split(b" ", 2)[1])
        worker.clear()
        assert attached.job is not None and a.queued + b.queued == 3 - len(served)
        slot.dataReceived(OK)
        assert status(consumer) == b"HTTP/1.1 200 OK"
    assert served == [b"/b/1", b"/a/1", b"/b/2"]
    # Idle, it waits in both lines, and is counted in both pools.
    assert (a.idle, b.idle) == (1, 1) and a.slots == b.slots == {attached}


@pytest.mark.unit
def test_a_slot_waiting_in_two_lines_takes_one_job_only():
    harness = HubHarness(pools=[parse_pool("a:prefix=/a"), parse_pool("b:prefix=/b")])
    a, b = harness.hub.pools["a"], harness.hub.pools["b"]
    slot, worker = harness.worker(["a", "b"])
    assert (a.idle, b.idle) == (1, 1)
    harness.consumer(request(b"h", b"/a/1"))
    assert worker.value().startswith(b"GET /a/1 ")
    # Taken in a, it left b's line: b's job waits for it.
    assert (a.idle, b.idle) == (0, 0)
    _, later = harness.consumer(request(b"h", b"/b/1"))
    assert b.queued == 1 and worker.value().count(b"GET ") == 1
    worker.clear()
    slot.dataReceived(OK)
    assert worker.value().startswith(b"GET /b/1 ")
    slot.dataReceived(OK)
    assert status(later) == b"HTTP/1.1 200 OK"
    assert (a.idle, b.idle) == (1, 1)
    slot.connectionLost(Failure(ConnectionDone()))
    assert (a.idle, b.idle, len(a.slots), len(b.slots)) == (0, 0, 0, 0)


@pytest.mark.unit
def test_pool_limits_are_the_hubs_unless_set():
    harness = HubHarness(pools=[parse_pool("a:max-queue=3"), parse_pool("b:prefix=/b")],
                         max_queue=7, request_timeout=9)
    a, b = harness.hub.pools["a"], harness.hub.pools["b"]
    assert (a.limits.max_queue, a.limits.request_timeout) == (3, 9)
    assert (b.limits.max_queue, b.limits.request_timeout) == (7, 9)
    assert pool_status(a, 0)["limits"] == {
        "max_queue": 3, "queue_timeout_seconds": 60.0, "request_timeout_seconds": 9}


def answering(text: bytes):
    """A WSGI app answering C{text} and the path it was asked for."""

    def app(environ, start_response):
        body = text + b" " + environ["PATH_INFO"].encode("latin-1")
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    return app


@pytest.mark.net
@pytest_twisted.ensureDeferred
async def test_two_pools_through_a_real_hub():
    """
    Requests reach the workers of their pool, by Host and by prefix; what
    no pool serves is 404 from the hub.
    """
    running = await start_hub(pools=[
        parse_pool("thumbs:host=thumbs.test"), parse_pool("models:prefix=/models:strip")])
    client = Client()
    try:
        await running.add_worker(answering(b"thumb"), pool="thumbs")
        await running.add_worker(answering(b"model"), pool="models")
        url = running.url
        cases = [
            ({"Host": "thumbs.test"}, "/a.jpg", 200, b"thumb /a.jpg"),
            ({"Host": "thumbs.test:8080"}, "/models/x", 200, b"model /x"),
            ({"Host": "other.test"}, "/models", 200, b"model /"),
            ({"Host": "other.test"}, "/a.jpg", 404, b"Nothing is served here.\n"),
        ]
        for headers, path, code, body in cases:
            response, got = await client.request("GET", url + path, headers=headers)
            assert (response.code, got) == (code, body), (headers, path)
        pools = running.hub.pools
        assert pools["thumbs"].metrics.responses == {(200, "worker"): 1}
        assert pools["models"].metrics.responses == {(200, "worker"): 2}
        await wait_for(lambda: not [
            call for call in reactor.getDelayedCalls() if "Tally" in repr(call.func)],
            what="the 404's count to be logged")
    finally:
        await client.close()
        await running.stop()


@pytest.mark.process
def test_pools_from_a_file_on_the_command_line(tmp_path, started):
    """
    twistd pothead-hub --pools FILE, two twistd workers with --pool each:
    each request reaches its pool's worker (by Host, by prefix, stripped);
    a worker asking for a pool the hub lacks is refused, the hub's log
    naming the pools it has.
    """
    pools = tmp_path / "pools"
    pools.write_text("# two services\nthumbs:host=thumbs.test\nmodels:prefix=/models:strip\n")
    hub, (consumer, worker_port) = start_hub_process(tmp_path, "--pools", str(pools))
    started.append(hub)
    logs = {name: tmp_path / f"{name}.log" for name in ("thumbs", "models", "nope")}
    for name, log in logs.items():
        started.append(start_worker(tmp_path, worker_port, log, "--pool", name))
    hub.wait_for(r"attached to pool thumbs")
    hub.wait_for(r"attached to pool models")
    hub.wait_for(r"refused attach from .*: 404 no pool named 'nope' \(pools: models, thumbs\)")

    def ask(host: str, path: str) -> tuple[int, bytes]:
        return get(f"http://127.0.0.1:{consumer}{path}", headers={"Host": host})

    assert ask("thumbs.test", "/a.jpg")[0] == 200
    assert ask("other.test", "/models/run?x=1")[0] == 200
    assert ask("thumbs.test:8080", "/models")[0] == 200
    assert ask("other.test", "/a.jpg") == (404, b"Nothing is served here.\n")
    assert [line.split(" ", 1)[1] for line in invocations(logs["thumbs"])] == ["GET /a.jpg"]
    assert [line.split(" ", 1)[1] for line in invocations(logs["models"])] == ["GET /run", "GET /"]
    assert invocations(logs["nope"]) == []
    assert hub.stop() == 0


@pytest.mark.net
@pytest_twisted.ensureDeferred
async def test_a_worker_serving_two_pools_under_load():
    """
    One worker with two slots joins two pools; 120 requests to both at
    once: every one answered by one app call, never more calls at once
    than slots, and both pools served.
    """
    lock = threading.Lock()
    state = {"running": 0, "most": 0, "calls": []}

    def app(environ, start_response):
        with lock:
            state["running"] += 1
            state["most"] = max(state["most"], state["running"])
            state["calls"].append(environ["PATH_INFO"])
        time.sleep(0.002)
        with lock:
            state["running"] -= 1
        body = environ["PATH_INFO"].encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    running = await start_hub(pools=[parse_pool("a:prefix=/a"), parse_pool("b:prefix=/b")])
    client = Client()
    try:
        await running.add_worker(app, slots=2, pool=["a", "b"])
        assert running.hub.pools["a"].slots == running.hub.pools["b"].slots
        paths = [f"/{'ab'[i % 2]}/{i}" for i in range(120)]
        results = await DeferredList(
            [Deferred.fromCoroutine(client.request("GET", running.url + path)) for path in paths],
            fireOnOneErrback=True, consumeErrors=True)
        assert [(r.code, body) for _, (r, body) in results] == [
            (200, path.encode()) for path in paths]
        assert sorted(state["calls"]) == sorted(paths)
        assert state["most"] <= 2
    finally:
        await client.close()
        await running.stop()


@pytest.mark.unit
def test_status_shows_each_slots_pools_and_hubs():
    """
    /status.json's entry of a slot says which pools it serves and to how
    many hubs its worker offers it; busy with one pool's job, it is
    "elsewhere" in the other's.
    """
    harness = HubHarness(pools=[parse_pool("a:prefix=/a"), parse_pool("b:prefix=/b")])
    protocol = harness.workers.buildProtocol(None)
    protocol.makeConnection(StringTransport())
    protocol.dataReceived(attach_request("hub", ["a", "b"], None, "w", offered_to=3))
    a, b = harness.hub.pools["a"], harness.hub.pools["b"]
    (entry,) = pool_status(a, harness.clock.seconds())["slots"]
    # Offered to three hubs, it bids before it takes a job (late binding).
    assert (entry["pools"], entry["hubs"], entry["state"]) == (["a", "b"], 3, "elsewhere")
    protocol.transport.loseConnection()
    protocol.connectionLost(Failure(ConnectionDone()))
    harness.worker(["a", "b"])
    harness.consumer(request(b"h", b"/b/1"))
    assert pool_status(b, 0)["slots"][0]["state"] == "busy"
    assert pool_status(b, 0)["slots"][0]["job"]["path"] == "/b/1"
    assert pool_status(a, 0)["slots"][0]["state"] == "elsewhere"
    assert pool_status(a, 0)["slots"][0]["job"] is None


@pytest.mark.unit
def test_a_bidding_slot_of_two_pools_hears_of_every_job():
    """
    A slot of two pools offered to several hubs (it bids): held with
    nothing to bid, it hears of a job queued in either pool, each time,
    and takes it once its worker says so.
    """
    harness = HubHarness(pools=[parse_pool("a:prefix=/a"), parse_pool("b:prefix=/b")])
    protocol = harness.workers.buildProtocol(None)
    worker = StringTransport()
    protocol.makeConnection(worker)
    protocol.dataReceived(attach_request("hub", ["a", "b"], None, "w", offered_to=2))
    assert b"Pothead-Bids: 1" in worker.value()
    answers = []
    for number, path in enumerate([b"/a/1", b"/b/1", b"/a/2"]):
        worker.clear()
        # Held, with no job to bid for: the slot waits out of line.
        protocol.dataReceived(verdict_notice(HOLD) if number else bid_answer_bytes(HOLD))
        assert worker.value() == b""
        _, consumer = harness.consumer(request(b"h", path))
        assert worker.value().startswith(b"OPTIONS * HTTP/1.1\r\n"), worker.value()
        worker.clear()
        protocol.dataReceived(bid_answer_bytes(TAKE))
        assert worker.value().startswith(b"GET " + path + b" HTTP/1.1\r\n")
        protocol.dataReceived(OK)
        answers.append(status(consumer))
    assert answers == [b"HTTP/1.1 200 OK"] * 3


def bid_answer_bytes(answer: bytes) -> bytes:
    """A worker's response to a bid, on the wire."""
    code, phrase, headers, body = bid_answer(answer)
    fields = b"".join(b"%s: %s\r\n" % pair for pair in headers)
    return b"HTTP/1.1 %d %s\r\n%sContent-Length: 0\r\n\r\n" % (code, phrase, fields)
