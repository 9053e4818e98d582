"""
Where each request's time went: the Server-Timing header on every response
the hub relays or gives itself, the pool's counts of requeues, refusals and
consumers gone, and the status page's percentiles.
"""

from __future__ import annotations

import re
import time

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from pothead.attach import DRAIN_NOTICE
from pothead.hub.history import percentile
from pothead.hub.job import MAX_REQUEUE_SIGNALS
from tests.harness import GET, HubHarness, header, status
from tests.http import Client
from tests.loopback import start_hub

REQUEUE = b"HTTP/1.1 503 Service Unavailable\r\nPothead-Requeue: 1\r\nContent-Length: 0\r\n\r\n"


def heads(transport) -> list[bytes]:
    """The header lines of the first response written to C{transport}."""
    return transport.value().split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]


@pytest.mark.unit
def test_relayed_response_says_queue_and_worker_time_after_the_workers_headers():
    harness = HubHarness()
    _, consumer = harness.consumer(GET)
    harness.clock.advance(2.0)
    slot, worker = harness.worker()
    harness.clock.advance(0.5)
    slot.dataReceived(
        b"HTTP/1.1 200 OK\r\nX-First: 1\r\nContent-Length: 2\r\nServer-Timing: app;dur=7\r\n"
        b"X-Last: 2\r\n\r\nok")
    assert heads(consumer) == [
        b"X-First: 1", b"Content-Length: 2", b"Server-Timing: app;dur=7", b"X-Last: 2",
        b"Server-Timing: queue;dur=2000.0, worker;dur=500.0",
    ]


@pytest.mark.unit
def test_no_server_timing_relays_the_workers_headers_exactly():
    harness = HubHarness(server_timing=False)
    slot, worker = harness.worker()
    _, consumer = harness.consumer(GET)
    slot.dataReceived(b"HTTP/1.1 200 OK\r\nX-First: 1\r\nContent-Length: 2\r\n\r\nok")
    assert heads(consumer) == [b"X-First: 1", b"Content-Length: 2"]
    harness = HubHarness(server_timing=False, queue_timeout=1)
    _, consumer = harness.consumer(GET)
    harness.clock.advance(1)
    assert status(consumer) == b"HTTP/1.1 503 Service Unavailable"
    assert header(consumer, b"Server-Timing") is None


@pytest.mark.unit
@pytest.mark.parametrize("limits, before, after, code, timing", [
    ({"queue_timeout": 3}, False, 3, 503, b'queue;dur=3000.0;desc="queue_timeout"'),
    ({"request_timeout": 2}, False, 2, 504, b'queue;dur=2000.0;desc="request_timeout"'),
    ({"request_timeout": 2}, True, 2, 504,
     b'queue;dur=500.0, worker;dur=1500.0;desc="request_timeout"'),
])
def test_the_hubs_own_answers_name_the_phase_they_ended(limits, before, after, code, timing):
    harness = HubHarness(**limits)
    _, consumer = harness.consumer(GET)
    if before:
        harness.clock.advance(0.5)
        harness.worker()
        after -= 0.5
    harness.clock.advance(after)
    assert status(consumer).startswith(b"HTTP/1.1 %d " % code)
    assert header(consumer, b"Server-Timing") == timing
    assert harness.pool.metrics.refusals == {timing.split(b'"')[1].decode(): 1}


@pytest.mark.unit
def test_queue_full_and_worker_failure_are_counted_and_named():
    harness = HubHarness(max_queue=1)
    harness.consumer(GET)
    _, refused = harness.consumer(GET)
    assert header(refused, b"Server-Timing") == b'queue;dur=0.0;desc="queue_full"'
    slot, worker = harness.worker()
    harness.clock.advance(0.25)
    slot.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n")
    metrics = harness.pool.metrics
    assert metrics.refusals == {"queue_full": 1, "worker_failed": 1}
    assert metrics.responses == {(503, "hub"): 1, (502, "hub"): 1}
    # The refused one never waited; the failed one waited nothing and its
    # worker took a quarter of a second.
    assert (metrics.queue_wait.count, metrics.worker_time.count, metrics.total_time.count) == (
        1, 1, 2)
    assert metrics.worker_time.sum == pytest.approx(0.25)


@pytest.mark.unit
def test_requeues_and_retries_are_counted_by_reason():
    harness = HubHarness(retries=1)
    _, consumer = harness.consumer(GET)
    slot, _ = harness.worker()
    slot.dataReceived(REQUEUE)
    slot, _ = harness.worker()
    slot.dataReceived(
        b"HTTP/1.1 503 Service Unavailable\r\nPothead-Requeue: 1\r\nPothead-Offer: withdrawn\r\n"
        b"Content-Length: 0\r\n\r\n")
    slot, worker = harness.worker()
    slot.dataReceived(DRAIN_NOTICE)
    slot, worker = harness.worker()
    slot.connectionLost(Failure(ConnectionDone()))
    slot, worker = harness.worker()
    slot.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert status(consumer) == b"HTTP/1.1 200 OK"
    metrics = harness.pool.metrics
    assert metrics.requeues == {
        "requeue_signal": 1, "withdrawn": 1, "drain": 1, "lost_worker": 1}
    assert metrics.retries == 4
    assert metrics.responses == {(200, "worker"): 1}


@pytest.mark.unit
def test_consumers_gone_are_counted_by_stage():
    harness = HubHarness()
    queued, _ = harness.consumer(GET)
    queued.connectionLost(Failure(ConnectionDone()))
    harness.worker()
    served, _ = harness.consumer(GET)
    served.connectionLost(Failure(ConnectionDone()))
    assert harness.pool.metrics.left == {"queued": 1, "served": 1}


@pytest.mark.unit
def test_percentiles_are_nearest_rank():
    waits = [float(n) for n in range(1, 101)]
    assert (percentile(waits, 0.5), percentile(waits, 0.95)) == (50.0, 95.0)
    assert percentile([0.3], 0.95) == 0.3
    assert percentile([], 0.5) is None


def _timing(response) -> dict[str, float]:
    value = response.headers.getRawHeaders(b"server-timing")[-1].decode()
    return {name: float(ms) / 1000 for name, ms in re.findall(r"(\w+);dur=([\d.]+)", value)}


@pytest.mark.net
@pytest_twisted.ensureDeferred
async def test_server_timing_agrees_with_the_time_measured():
    """
    Two requests for one slot whose app takes 0.3 s: the second waits for
    the first, and each one's queue and worker times add up to no more
    than the consumer measured.
    """

    def slow(environ, start_response):
        time.sleep(0.3)
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    running = await start_hub()
    client = Client()
    try:
        await running.add_worker(slow)

        async def timed():
            started = time.monotonic()
            response, body = await client.request("GET", f"{running.url}/slow")
            return response, time.monotonic() - started

        results = await gatherResults([Deferred.fromCoroutine(timed()) for _ in range(2)])
    finally:
        await client.close()
        await running.stop()
    timings = [(_timing(response), elapsed) for response, elapsed in results]
    for timing, elapsed in timings:
        assert timing["worker"] >= 0.29
        assert timing["queue"] + timing["worker"] <= elapsed + 0.002
    (first, _), (second, _) = sorted(timings, key=lambda pair: pair[0]["queue"])
    assert first["queue"] < 0.1
    assert second["queue"] >= 0.25


@pytest.mark.unit
def test_a_draining_workers_notice_is_no_refusal():
    """
    More draining workers' notices than the requeue limit: the job keeps
    its place and waits for a worker that stays; as many refusals are 503.
    """
    for notice, code in ((DRAIN_NOTICE, None), (REQUEUE, b"503")):
        harness = HubHarness()
        _, consumer = harness.consumer(GET)
        for _ in range(MAX_REQUEUE_SIGNALS + 1):
            slot, _ = harness.worker()
            slot.dataReceived(notice)
        if code is None:
            assert consumer.value() == b"" and harness.pool.queued == 1
            assert harness.pool.metrics.requeues == {"drain": MAX_REQUEUE_SIGNALS + 1}
        else:
            assert status(consumer).startswith(b"HTTP/1.1 503 ")


@pytest.mark.unit
def test_time_back_in_line_is_queue_time():
    """
    A job a worker handed back after 0.2 s, then left waiting until its
    queue timeout: all 10.2 s were queue time, and no worker served it.
    """
    harness = HubHarness(queue_timeout=10)
    _, consumer = harness.consumer(GET)
    slot, _ = harness.worker()
    harness.clock.advance(0.2)
    slot.dataReceived(REQUEUE)
    harness.clock.advance(10)
    assert header(consumer, b"Server-Timing") == b'queue;dur=10200.0;desc="queue_timeout"'
    metrics = harness.pool.metrics
    assert metrics.queue_wait.sum == pytest.approx(10.2)
    assert metrics.worker_time.count == 0


@pytest.mark.unit
def test_a_consumer_the_hub_cut_off_did_not_leave():
    """
    A stalled response: the hub cuts the consumer off, counted as stalled,
    not as a consumer that left.
    """
    harness = HubHarness(stall_timeout=5)
    slot, _ = harness.worker()
    channel, consumer = harness.consumer(GET)
    slot.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
    harness.clock.advance(5)
    assert consumer.disconnecting or consumer.disconnected
    channel.connectionLost(Failure(ConnectionDone()))
    metrics = harness.pool.metrics
    assert (dict(metrics.refusals), dict(metrics.left)) == ({"stalled": 1}, {})
