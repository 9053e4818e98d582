"""
Late binding: a worker's slot offered to several hubs at once, taken by
the first hub that sends a job, withdrawn at the others until the job is
done, and a job sent in the race handed back (requeued at its hub), so
that nothing runs twice and nothing is lost.
"""

from __future__ import annotations

import threading
from collections import Counter

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.web.wsgi import WSGIResource

from pothead.attach import DETACH_NOTICE, WITHDRAW_NOTICE, attach_request
from pothead.hub.job import MAX_REQUEUE_SIGNALS
from pothead.worker.attach_client import WorkerSlot
from pothead.worker.service import worker_service
from pothead.worker.slot_server import SlotServer
from tests.apps.wsgi import gated
from tests.harness import GET, HubHarness, InThisThread, status, wait_for
from tests.http import Client
from tests.loopback import start_hub

ATTACHED = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: ptth\r\nConnection: Upgrade\r\n\r\n"


def counting(calls: list):
    """A WSGI app that notes each call (its path) and answers it at once."""

    def app(environ, start_response):
        calls.append(environ["PATH_INFO"])
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    return app


class Waiting:
    """A thread pool whose calls wait until the test runs them: the slot stays busy."""

    def __init__(self) -> None:
        self.calls: list = []

    def callInThread(self, f, *args, **kwargs) -> None:
        self.calls.append((f, args, kwargs))


def offered(hubs: int, calls: list, pool=None, clock=None, lines=None, attached=ATTACHED):
    """
    One slot offered to C{hubs} hubs, each offer attached on a
    StringTransport; the app runs at once, in this thread, unless C{pool}
    holds its calls.

    :param lines: what the worker knows of each hub's line, if shared
        with other slots.
    :param attached: the hubs' answer to the attach (a hub of an earlier
        version, without bids, by default).
    :return: the slot, its C{(client, transport)} pairs, and the clock.
    """
    clock = clock or Clock()
    now = InThisThread()
    server = SlotServer(WSGIResource(now, pool or now, counting(calls)), clock)
    slot = WorkerSlot(server, "default", None, "me/1/0", 3.0, clock, offered_to=hubs,
                      lines=lines)
    offers = []
    for port in range(hubs):
        client = slot.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 4040 + port))
        client.makeConnection(transport)
        client.attach()
        client.dataReceived(attached)
        transport.clear()
        offers.append((client, transport))
    return slot, offers, clock


@pytest.mark.unit
def test_attach_request_says_how_many_hubs_have_the_offer():
    """A hub of this version logs a slot offered elsewhere quietly; an older one ignores the header."""
    assert b"\r\nPothead-Offers: 3\r\n" in attach_request("h:1", "default", None, "w", 3)
    assert b"Pothead-Offers" not in attach_request("h:1", "default", None, "w", 1)


@pytest.mark.unit
def test_a_job_withdraws_the_offers_at_the_other_hubs():
    """
    The first hub's job is served; at the other hubs the slot sends the
    detach notice and half-closes, before either can use it.
    """
    calls: list = []
    slot, [(a, at_a), (b, at_b), (c, at_c)], clock = offered(3, calls)
    a.dataReceived(b"GET /one HTTP/1.1\r\nHost: h\r\n\r\n")
    assert calls == ["/one"]
    assert at_a.value().startswith(b"HTTP/1.1 200 OK\r\n")
    clock.advance(0)
    for transport in (at_b, at_c):
        assert transport.value() == WITHDRAW_NOTICE
    assert at_a.value().count(b"HTTP/1.1") == 1


@pytest.mark.unit
def test_a_job_sent_in_the_race_is_handed_back_and_runs_once():
    """
    Two hubs send a job to the same slot at the same moment: the first
    read is served, the second is answered with the detach notice (its hub
    requeues it), and the app runs once.
    """
    calls: list = []
    # The first job's app call waits in the thread pool: the slot is busy
    # when the second job arrives.
    pool = Waiting()
    slot, [(a, at_a), (b, at_b)], clock = offered(2, calls, pool)
    a.dataReceived(b"GET /first HTTP/1.1\r\nHost: h\r\n\r\n")
    b.dataReceived(b"GET /second HTTP/1.1\r\nHost: h\r\n\r\n")
    clock.advance(0)
    assert len(pool.calls) == 1 and calls == []
    assert at_b.value() == WITHDRAW_NOTICE
    assert at_a.value() == b""
    assert not slot.free_for(b) and slot.free_for(a)


@pytest.mark.unit
def test_the_slot_is_free_again_once_its_connection_is_idle_or_gone():
    calls: list = []
    slot, [(a, at_a), (b, at_b)], clock = offered(2, calls)
    a.dataReceived(b"GET /one HTTP/1.1\r\nHost: h\r\n\r\n")
    assert calls == ["/one"] and slot.free_for(b)
    slot2, [(c, _), (d, _)], _ = offered(2, calls)
    slot2.claim(c)
    assert not slot2.free_for(d)
    c.connectionLost(Failure(ConnectionError()))
    assert slot2.free_for(d)


@pytest.mark.unit
def test_an_offer_answered_after_the_slot_was_taken_detaches_at_once():
    """
    An attach the hub answers while another hub's job has the slot is
    detached at once: that hub may already count the slot.
    """
    calls: list = []
    clock = Clock()
    now = InThisThread()
    server = SlotServer(WSGIResource(now, now, counting(calls)), clock)
    slot = WorkerSlot(server, "default", None, "me/1/0", 3.0, clock, offered_to=2)
    serving, late = slot.buildProtocol(None), slot.buildProtocol(None)
    for client in (serving, late):
        client.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 4040)))
        client.attach()
    serving.dataReceived(ATTACHED)
    assert slot.claim(serving)
    late.transport.clear()
    late.dataReceived(ATTACHED)
    assert late.transport.value() == WITHDRAW_NOTICE


@pytest.mark.net
@pytest_twisted.ensureDeferred
async def test_two_hubs_share_one_slot():
    """
    One slot offered to two hubs: while hub A's job runs, hub B sees no
    idle slot and queues its job; once A's job is done the slot is offered
    to B again and serves it.  Each job runs once.
    """
    first, second = await start_hub(), await start_hub()
    calls: list = []
    gate = threading.Event()
    worker = worker_service(
        reactor, gated(calls, gate), [first.worker_endpoint, second.worker_endpoint], 1,
    )
    worker.startService()
    client = Client()
    try:
        await wait_for(lambda: first.pool.idle == 1 and second.pool.idle == 1,
                       what="the slot offered at both hubs")
        held = Deferred.fromCoroutine(client.request("GET", first.url + "/hold"))
        await wait_for(lambda: calls == ["/hold"], what="the held job to start")
        await wait_for(lambda: second.pool.idle == 0, what="the offer at B withdrawn")
        queued = Deferred.fromCoroutine(client.request("GET", second.url + "/queued"))
        await wait_for(lambda: second.pool.queued == 1, what="B's job to queue")
        await deferToThread(gate.set)
        (response, body), (response2, body2) = await DeferredList(
            [held, queued], fireOnOneErrback=True, consumeErrors=True,
        ).addCallback(lambda results: [result for _, result in results])
        assert (response.code, body, response2.code, body2) == (200, b"ok", 200, b"ok")
        assert calls == ["/hold", "/queued"]
    finally:
        gate.set()
        await client.close()
        await worker.stopService()
        await first.stop()
        await second.stop()


@pytest.mark.net
@pytest_twisted.ensureDeferred
async def test_load_on_two_hubs_runs_every_job_once():
    """
    Many jobs sent to two hubs at once, two slots offered to both: every
    job is answered 200 once, and the app ran exactly as often.
    """
    first, second = await start_hub(), await start_hub()
    calls: list = []
    worker = worker_service(
        reactor, counting(calls), [first.worker_endpoint, second.worker_endpoint], 2,
    )
    worker.startService()
    client = Client()
    try:
        await wait_for(lambda: first.pool.idle == 2 and second.pool.idle == 2,
                       what="both slots offered at both hubs")
        requests = [
            Deferred.fromCoroutine(client.request("GET", f"{hub.url}/{name}{n}"))
            for n in range(60) for name, hub in (("a", first), ("b", second))
        ]
        results = await DeferredList(requests, fireOnOneErrback=True, consumeErrors=True)
        statuses = Counter(response.code for _, (response, _) in results)
        assert statuses == {200: 120}
        assert sorted(calls) == sorted(f"/{name}{n}" for n in range(60) for name in "ab")
    finally:
        await client.close()
        await worker.stopService()
        await first.stop()
        await second.stop()


@pytest.mark.unit
@pytest.mark.parametrize("notice, answered", [
    pytest.param(WITHDRAW_NOTICE, False, id="withdrawn-not-counted"),
    pytest.param(DETACH_NOTICE, True, id="refusals-counted"),
])
def test_losing_the_race_is_never_counted_against_the_job(notice, answered):
    """
    A job that loses the race for a slot again and again stays at the
    head of its hub's line: the withdrawn notice is not a worker handing
    it back, so it never reaches the 503 of MAX_REQUEUE_SIGNALS; the
    plain detach notice still does.
    """
    harness = HubHarness(queue_timeout=600, request_timeout=600)
    slot, transport = harness.worker()
    _, consumer = harness.consumer(GET)
    rounds = 0
    while rounds < MAX_REQUEUE_SIGNALS + 5:
        rounds += 1
        assert transport.value().startswith(b"GET /job")
        # The next slot waits, so the job handed back goes straight to it.
        waiting = harness.worker()
        slot.dataReceived(notice)
        if consumer.value():
            break
        slot, transport = waiting
    assert status(consumer) == (b"HTTP/1.1 503 Service Unavailable" if answered else b"")
    assert rounds == (MAX_REQUEUE_SIGNALS + 1 if answered else MAX_REQUEUE_SIGNALS + 5)
