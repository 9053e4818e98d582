"""
Bids: a slot offered to several hubs that speak them takes the oldest job
among them (pothead.bidding; docs/protocol.md, section 6b).

Hub side: a BiddingSlot on a HubHarness, the worker's answers written by
hand.  Worker side: a WorkerSlot whose connections are StringTransports,
the hubs' bids written by hand.  Then two real hubs on 127.0.0.1.
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

from pothead.attach import DRAIN_NOTICE, attach_request
from pothead.bidding import (
    BID_HEADER,
    HOLD_NOTICE,
    NEXT_HEADER,
    BadBid,
    bid_request,
    next_waited,
    parse_bid,
    verdict_notice,
    with_next,
)
from pothead.http.headers import LINK_HEADERS, forwarded_headers
from pothead.http.request import RequestHead
from pothead.hub.bidding_slot import BiddingSlot
from pothead.hub.slot import Slot
from pothead.worker.attach_client import HubLines, Offer
from pothead.worker.service import worker_service
from tests import test_late_binding as late_binding
from tests.apps.wsgi import gated
from tests.harness import GET, HubHarness, status, wait_for
from tests.http import Client
from tests.loopback import start_hub
from tests.test_late_binding import Waiting, counting

ATTACHED_WITH_BIDS = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: ptth\r\nConnection: Upgrade\r\n"
    b"Pothead-Bids: 1\r\n\r\n"
)


def answer(word: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nPothead-Offer: " + word + b"\r\nContent-Length: 0\r\n\r\n"


# The wire format.


@pytest.mark.unit
def test_a_bid_says_how_long_the_head_job_waited():
    assert bid_request(0.0125) == (
        b"OPTIONS * HTTP/1.1\r\nHost: pothead\r\nPothead-Bid: 12.500\r\n\r\n"
    )
    assert b"Pothead-Bid: none\r\n" in bid_request(None)
    assert parse_bid(b"OPTIONS", b"*", [b"12.500"]) == pytest.approx(0.0125)
    assert parse_bid(b"OPTIONS", b"*", [b"none"]) is None


@pytest.mark.unit
@pytest.mark.parametrize("method, target, values", [
    (b"GET", b"*", [b"1"]),
    (b"OPTIONS", b"/", [b"1"]),
    (b"OPTIONS", b"*", [b"1", b"2"]),
    (b"OPTIONS", b"*", [b"nan"]),
    (b"OPTIONS", b"*", [b"inf"]),
    (b"OPTIONS", b"*", [b"-5"]),
    (b"OPTIONS", b"*", [b"soon"]),
])
def test_anything_else_is_not_a_bid(method, target, values):
    with pytest.raises(BadBid):
        parse_bid(method, target, values)


@pytest.mark.unit
def test_a_consumer_cannot_forge_a_bid():
    """The hub drops a consumer's Pothead-Bid and -Next: a worker tells bids from jobs by them."""
    assert {BID_HEADER.lower(), NEXT_HEADER.lower()} <= LINK_HEADERS
    kept = forwarded_headers(
        [(b"Pothead-Bid", b"99999"), (b"Pothead-Next", b"1"), (b"Accept", b"*/*")],
        "10.0.0.1", b"http", b"h", None,
    )
    assert list(kept) == [b"Accept", b"X-Forwarded-For", b"X-Forwarded-Proto",
                          b"X-Forwarded-Host"]


def head(fields: list) -> RequestHead:
    return RequestHead(b"GET", b"/x", b"HTTP/1.1", fields)


@pytest.mark.unit
def test_a_job_says_what_waits_behind_it_and_the_app_never_sees_it():
    assert with_next(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n", 0.0425) == (
        b"GET /x HTTP/1.1\r\nHost: h\r\nPothead-Next: 42.500\r\n\r\n"
    )
    priced = head([(b"Host", b"h"), (b"Pothead-Next", b"42.500")])
    assert next_waited(priced) == pytest.approx(0.0425)
    assert priced.fields == [(b"Host", b"h")]
    empty = head([(b"Host", b"h"), (b"Pothead-Next", b"none")])
    assert next_waited(empty) is None and empty.fields == [(b"Host", b"h")]
    # Only the hub's own, last, is taken off.
    other = head([(b"Pothead-Next", b"5"), (b"Host", b"h")])
    assert next_waited(other) is None and len(other.fields) == 2


@pytest.mark.unit
def test_bids_are_offered_with_several_hubs_only():
    assert b"\r\nPothead-Bids: 1\r\n" in attach_request("h:1", "default", None, "w", 2)
    assert b"Pothead-Bids" not in attach_request("h:1", "default", None, "w", 1)


# The hub's side.


def bidding_worker(harness: HubHarness):
    """A slot offered to two hubs attached to the harness's hub; its 101 cleared, its bid kept."""
    protocol = harness.workers.buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.9", 6000))
    protocol.makeConnection(transport)
    protocol.dataReceived(attach_request("hub", "default", None, "w", 2))
    head, _, rest = transport.value().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ") and b"\r\nPothead-Bids: 1" in head
    transport.clear()
    transport.write(rest)
    return protocol._successor, transport


def written_bid(transport) -> bytes | None:
    """The value of the bid last written, and clear the transport."""
    data = transport.value()
    transport.clear()
    assert data.startswith(b"OPTIONS * HTTP/1.1\r\n"), data
    return data.split(b"Pothead-Bid: ", 1)[1].split(b"\r\n", 1)[0]


@pytest.mark.unit
def test_the_hub_says_it_speaks_bids_and_bids_at_once():
    harness = HubHarness()
    slot, transport = bidding_worker(harness)
    assert transport.value() == bid_request(None)
    assert isinstance(slot, BiddingSlot)
    # Offered to one hub only, or without bids: an ordinary slot.
    for request in (attach_request("hub", "default", None, "w", 1),
                    attach_request("hub", "default", None, "w", 2).replace(b"Pothead-Bids: 1\r\n", b"")):
        plain = harness.workers.buildProtocol(None)
        plain_transport = StringTransport()
        plain.makeConnection(plain_transport)
        plain.dataReceived(request)
        assert b"Pothead-Bids" not in plain_transport.value()
        assert type(plain._successor) is Slot


@pytest.mark.unit
def test_open_slot_waits_in_line_and_takes_the_next_job():
    harness = HubHarness()
    slot, transport = bidding_worker(harness)
    transport.clear()
    slot.dataReceived(answer(b"open"))
    assert harness.pool.idle == 1 and transport.value() == b""
    harness.consumer(GET)
    assert transport.value().startswith(b"GET /job HTTP/1.1\r\n")


@pytest.mark.unit
def test_take_sends_the_head_job_and_hold_sends_nothing():
    harness = HubHarness()
    harness.consumer(GET)
    harness.clock.advance(0.25)
    slot, transport = bidding_worker(harness)
    assert float(written_bid(transport)) == pytest.approx(250.0)
    held, held_transport = bidding_worker(harness)
    held_transport.clear()
    slot.dataReceived(answer(b"take"))
    assert transport.value().startswith(b"GET /job HTTP/1.1\r\n")
    assert transport.value().endswith(b"\r\nPothead-Next: none\r\n\r\n")
    # Held with nothing in line: it waits, out of line, for a job.
    held.dataReceived(answer(b"hold"))
    assert held_transport.value() == b"" and harness.pool.idle == 0
    assert held in harness.pool.watching


@pytest.mark.unit
def test_a_held_slot_that_had_nothing_bids_when_a_job_comes():
    """The worker does not renew a hub it knows was empty: that hub bids by itself."""
    harness = HubHarness()
    slot, transport = bidding_worker(harness)
    transport.clear()
    slot.dataReceived(answer(b"hold"))
    assert transport.value() == b""
    harness.consumer(GET)
    assert written_bid(transport) == b"0.000"
    # Held while the job still waits: it bids again at once, and the new
    # bid stands at the worker until the slot is free.
    harness.clock.advance(0.5)
    slot.dataReceived(answer(b"hold"))
    assert float(written_bid(transport)) == pytest.approx(500.0)


@pytest.mark.unit
def test_take_with_an_emptied_line_bids_none_again():
    harness = HubHarness()
    _, consumer = harness.consumer(GET)
    slot, transport = bidding_worker(harness)
    transport.clear()
    # Another slot of this hub takes the job while the bid is out.
    other, other_transport = harness.worker()
    assert other_transport.value() == b"" and harness.pool.queued == 0
    slot.dataReceived(answer(b"take"))
    assert written_bid(transport) == b"none"


@pytest.mark.unit
def test_a_hold_notice_takes_an_open_slot_out_of_line():
    harness = HubHarness()
    slot, transport = bidding_worker(harness)
    slot.dataReceived(answer(b"open"))
    transport.clear()
    slot.dataReceived(HOLD_NOTICE)
    assert harness.pool.idle == 0 and transport.value() == b""
    _, consumer = harness.consumer(GET)
    # Held with nothing bid: it bids for the job that came.
    assert written_bid(transport) == b"0.000"
    assert consumer.value() == b""


@pytest.mark.unit
def test_a_job_that_crosses_the_hold_notice_is_requeued_uncounted():
    harness = HubHarness(queue_timeout=600, request_timeout=600)
    slot, transport = bidding_worker(harness)
    slot.dataReceived(answer(b"open"))
    _, consumer = harness.consumer(GET)
    assert b"GET /job" in transport.value()
    slot.dataReceived(HOLD_NOTICE)
    assert transport.disconnecting
    assert harness.pool.queued == 1 and consumer.value() == b""
    job = harness.pool._line.first
    assert job._hand_backs == 0


@pytest.mark.unit
def test_a_bid_answered_by_nonsense_drops_the_slot():
    harness = HubHarness()
    slot, transport = bidding_worker(harness)
    transport.clear()
    slot.dataReceived(answer(b"maybe"))
    assert transport.disconnected or transport.disconnecting
    harness.consumer(GET)
    assert harness.pool.queued == 1 and transport.value() == b""


@pytest.mark.unit
def test_after_a_job_the_verdict_follows_the_response_and_take_sends_the_next_at_once():
    harness = HubHarness()
    slot, transport = bidding_worker(harness)
    slot.dataReceived(answer(b"open"))
    _, consumer = harness.consumer(GET)
    harness.consumer(GET.replace(b"/job", b"/two"))
    transport.clear()
    # The response and the verdict arrive in one read, as the worker writes them.
    slot.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + verdict_notice(b"take"))
    assert status(consumer) == b"HTTP/1.1 200 OK"
    assert transport.value().startswith(b"GET /two HTTP/1.1\r\n")
    assert transport.value().endswith(b"\r\nPothead-Next: none\r\n\r\n")


@pytest.mark.unit
def test_a_verdict_of_hold_after_a_job_bids_again_if_jobs_wait():
    harness = HubHarness()
    slot, transport = bidding_worker(harness)
    slot.dataReceived(answer(b"open"))
    transport.clear()
    harness.consumer(GET)
    harness.consumer(GET)
    assert transport.value().endswith(b"\r\nPothead-Next: none\r\n\r\n")
    transport.clear()
    slot.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert transport.value() == b""  # the verdict is awaited, nothing sent
    slot.dataReceived(verdict_notice(b"hold"))
    assert written_bid(transport) == b"0.000"


# The worker's side.


def offered(hubs: int, calls: list, pool=None, clock=None, lines=None):
    """One slot offered to C{hubs} hubs that speak bids, on StringTransports."""
    return late_binding.offered(hubs, calls, pool, clock, lines, attached=ATTACHED_WITH_BIDS)


def answered(transport) -> bytes | None:
    """The Pothead-Offer of what the worker wrote, and clear the transport."""
    data = transport.value()
    transport.clear()
    if not data:
        return None
    return data.split(b"Pothead-Offer: ", 1)[1].split(b"\r\n", 1)[0]


JOB = b"GET /one HTTP/1.1\r\nHost: h\r\n\r\n"


def finish(pool: Waiting) -> None:
    """Run the app call the slot's thread pool holds: the job's response goes out."""
    f, args, kwargs = pool.calls.pop(0)
    f(*args, **kwargs)


def job(path: bytes, next_waited: float | None) -> bytes:
    return with_next(b"GET " + path + b" HTTP/1.1\r\nHost: h\r\n\r\n", next_waited)


def after_response(transport) -> bytes | None:
    """The verdict the worker wrote after a job's response, if any."""
    data = transport.value()
    transport.clear()
    _, _, verdict = data.partition(b"\r\n\r\nok")
    return verdict.split(b"Pothead-Offer: ", 1)[1].split(b"\r\n", 1)[0] if verdict else None


@pytest.mark.unit
def test_a_free_slot_takes_the_first_bid_for_a_job():
    calls: list = []
    slot, [(a, at_a), (b, at_b)], _ = offered(2, calls)
    a.dataReceived(bid_request(0.005))
    assert answered(at_a) == b"take"
    # Promised to A: B's bid of none is held, and B bids when it has a job.
    b.dataReceived(bid_request(None))
    assert answered(at_b) == b"hold"
    a.dataReceived(job(b"/one", None))
    assert calls == ["/one"]


@pytest.mark.unit
def test_bids_stand_while_the_slot_is_busy_and_the_oldest_wins():
    calls: list = []
    pool = Waiting()
    slot, [(a, at_a), (b, at_b), (c, at_c)], _ = offered(3, calls, pool)
    for client in (a, b, c):
        client.dataReceived(bid_request(None))
    assert [answered(t) for t in (at_a, at_b, at_c)] == [b"open"] * 3
    a.dataReceived(job(b"/one", 0.001))
    assert at_b.value() == at_c.value() == HOLD_NOTICE
    at_b.clear()
    at_c.clear()
    b.dataReceived(bid_request(0.020))
    c.dataReceived(bid_request(0.005))
    assert (at_b.value(), at_c.value()) == (b"", b"")  # they stand
    finish(pool)
    assert after_response(at_a) == b"hold"
    assert (answered(at_b), answered(at_c)) == (b"take", None)
    assert (a.offer, b.offer, c.offer) == (Offer.HELD, Offer.TAKEN, Offer.BID)


@pytest.mark.unit
def test_the_serving_hub_keeps_the_slot_when_its_next_job_is_the_oldest():
    calls: list = []
    pool = Waiting()
    slot, [(a, at_a), (b, at_b)], _ = offered(2, calls, pool)
    a.dataReceived(bid_request(None))
    b.dataReceived(bid_request(None))
    at_a.clear()
    at_b.clear()
    a.dataReceived(job(b"/one", 0.050))
    assert at_b.value() == HOLD_NOTICE
    at_b.clear()
    b.dataReceived(bid_request(0.010))
    finish(pool)
    assert after_response(at_a) == b"take"
    assert answered(at_b) is None and b.offer is Offer.BID


@pytest.mark.unit
def test_with_no_job_anywhere_the_verdict_is_open():
    calls: list = []
    pool = Waiting()
    slot, [(a, at_a), (b, at_b)], _ = offered(2, calls, pool)
    a.dataReceived(bid_request(None))
    b.dataReceived(bid_request(None))
    at_a.clear()
    a.dataReceived(job(b"/one", None))
    finish(pool)
    assert after_response(at_a) == b"open"
    assert slot.free_for(b)


@pytest.mark.unit
def test_a_hub_heard_to_have_nothing_has_its_standing_bids_held():
    """
    Two slots share what the worker knows of each hub's line: a job on one
    slot saying its hub has nothing next makes the other slot's standing
    bid from that hub stale, so it is held (the hub bids again when a job
    comes).
    """
    calls: list = []
    lines = HubLines()
    clock = Clock()
    first, [(a1, _), (b1, at_b1)], _ = offered(2, calls, Waiting(), clock, lines)
    second, [(a2, _), (b2, at_b2)], _ = offered(2, calls, Waiting(), clock, lines)
    # The first slot serves A; B bids on it for a job, which stands.
    for client in (a1, b1, a2, b2):
        client.dataReceived(bid_request(None))
    a1.dataReceived(job(b"/a", None))
    at_b1.clear()
    b1.dataReceived(bid_request(0.010))
    assert at_b1.value() == b"" and b1.offer is Offer.BID
    # B sends its job to the second slot, and has nothing behind it.
    b2.dataReceived(job(b"/b", None))
    assert answered(at_b1) == b"hold" and b1.offer is Offer.HELD


@pytest.mark.unit
def test_nobody_has_a_job_so_the_offer_is_open_everywhere_and_the_first_job_holds_the_rest():
    calls: list = []
    slot, [(a, at_a), (b, at_b)], _ = offered(2, calls)
    a.dataReceived(bid_request(None))
    b.dataReceived(bid_request(None))
    assert (answered(at_a), answered(at_b)) == (b"open", b"open")
    a.dataReceived(JOB)
    assert calls == ["/one"]
    assert at_b.value() == HOLD_NOTICE
    assert b.offer is Offer.HELD


@pytest.mark.unit
def test_a_job_on_a_held_connection_crossed_the_notice_and_is_not_run():
    calls: list = []
    slot, [(a, at_a), (b, at_b)], _ = offered(2, calls, Waiting())
    a.dataReceived(bid_request(None))
    b.dataReceived(bid_request(None))
    a.dataReceived(JOB)
    at_b.clear()
    b.dataReceived(b"GET /crossed HTTP/1.1\r\nHost: h\r\n\r\n")
    assert at_b.value() == b""  # the hold notice already answers it
    assert at_b.disconnecting


@pytest.mark.unit
def test_a_hub_told_to_take_that_bids_none_frees_the_slot_for_a_standing_bid():
    calls: list = []
    slot, [(a, at_a), (b, at_b)], _ = offered(2, calls)
    a.dataReceived(bid_request(0.004))
    assert answered(at_a) == b"take"
    b.dataReceived(bid_request(0.002))
    assert answered(at_b) is None  # it stands
    a.dataReceived(bid_request(None))
    assert (answered(at_a), answered(at_b)) == (b"hold", b"take")


@pytest.mark.unit
def test_a_malformed_bid_drops_the_connection():
    calls: list = []
    slot, [(a, at_a), _], _ = offered(2, calls)
    a.dataReceived(b"OPTIONS * HTTP/1.1\r\nHost: h\r\nPothead-Bid: soon\r\n\r\n")
    assert at_a.disconnected or at_a.disconnecting
    assert calls == []


@pytest.mark.unit
def test_draining_answers_a_standing_bid_with_the_detach_notice():
    calls: list = []
    pool = Waiting()
    slot, [(a, at_a), (b, at_b)], clock = offered(2, calls, pool)
    a.dataReceived(bid_request(None))
    b.dataReceived(bid_request(None))
    a.dataReceived(JOB)
    b.dataReceived(bid_request(0.004))
    at_b.clear()
    drained = slot.drain()
    clock.advance(0)
    assert at_b.value() == DRAIN_NOTICE
    assert not drained.called  # A's job is still running
    finish(pool)
    clock.advance(0)
    assert b"Pothead-Requeue: 1" in at_a.value()
    assert calls == ["/one"]


# Two real hubs.


@pytest.mark.net
@pytest_twisted.ensureDeferred
async def test_the_older_job_at_the_other_hub_goes_first():
    """
    One slot, two hubs.  While it serves A's job, B queues a job, then A
    queues one: when the slot is free, B's (older) is served before A's,
    though A's connection is the one that just served.
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
                       what="the slot open at both hubs")
        held = Deferred.fromCoroutine(client.request("GET", first.url + "/hold"))
        await wait_for(lambda: calls == ["/hold"], what="the held job to start")
        older = Deferred.fromCoroutine(client.request("GET", second.url + "/older"))
        await wait_for(lambda: second.pool.queued == 1, what="B's job to queue")
        newer = Deferred.fromCoroutine(client.request("GET", first.url + "/newer"))
        await wait_for(lambda: first.pool.queued == 1, what="A's job to queue")
        await deferToThread(gate.set)
        results = await DeferredList([held, older, newer], fireOnOneErrback=True,
                                     consumeErrors=True)
        assert [response.code for _, (response, _) in results] == [200, 200, 200]
        assert calls == ["/hold", "/older", "/newer"]
    finally:
        gate.set()
        await client.close()
        await worker.stopService()
        await first.stop()
        await second.stop()


@pytest.mark.net
@pytest_twisted.ensureDeferred
async def test_bids_keep_the_connections_through_load():
    """
    Under load at both hubs, every job runs once, and the slots' offers
    are held and renewed on the connections they attached with: no
    connection is opened per job.
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
                       what="both slots open at both hubs")
        clients = {id(c) for slot in worker.slots for c in slot.clients}
        requests = [
            Deferred.fromCoroutine(client.request("GET", f"{hub.url}/{name}{n}"))
            for n in range(60) for name, hub in (("a", first), ("b", second))
        ]
        results = await DeferredList(requests, fireOnOneErrback=True, consumeErrors=True)
        assert Counter(response.code for _, (response, _) in results) == {200: 120}
        assert sorted(calls) == sorted(f"/{name}{n}" for n in range(60) for name in "ab")
        still = {id(c) for slot in worker.slots for c in slot.clients}
        # A job that crossed a hold notice costs its connection; nothing else does.
        assert len(clients - still) <= 4
    finally:
        await client.close()
        await worker.stopService()
        await first.stop()
        await second.stop()


@pytest.mark.unit
def test_a_hub_told_to_take_that_sends_nothing_loses_the_slot_after_the_attach_timeout():
    calls: list = []
    slot, [(a, at_a), (b, at_b)], clock = offered(2, calls)
    a.dataReceived(bid_request(0.004))
    b.dataReceived(bid_request(0.002))
    assert (answered(at_a), answered(at_b)) == (b"take", None)
    clock.advance(2.9)
    assert not at_a.disconnecting
    clock.advance(0.2)  # the slot's attach timeout is 3 s here
    assert at_a.disconnecting
    a.connectionLost(Failure(ConnectionError()))
    assert answered(at_b) == b"take"
    b.dataReceived(job(b"/b", None))
    assert calls == ["/b"] and clock.getDelayedCalls() == []


@pytest.mark.unit
def test_a_job_a_hub_was_told_to_send_is_not_counted_on_twice():
    """
    Two slots free one after the other while hub B has one job bid for on
    both: the first takes it; the second does not also tell B to take
    (B would have nothing to send) until B's job says more waits behind.
    """
    calls: list = []
    lines, clock = HubLines(), Clock()
    first_pool, second_pool = Waiting(), Waiting()
    first, [(a1, at_a1), (b1, at_b1)], _ = offered(2, calls, first_pool, clock, lines)
    second, [(a2, at_a2), (b2, at_b2)], _ = offered(2, calls, second_pool, clock, lines)
    for client in (a1, b1, a2, b2):
        client.dataReceived(bid_request(None))
    a1.dataReceived(job(b"/a1", None))
    a2.dataReceived(job(b"/a2", None))
    for transport in (at_a1, at_b1, at_a2, at_b2):
        transport.clear()
    b1.dataReceived(bid_request(0.010))
    b2.dataReceived(bid_request(0.010))
    finish(first_pool)
    assert after_response(at_a1) == b"hold" and answered(at_b1) == b"take"
    finish(second_pool)
    assert after_response(at_a2) == b"open" and answered(at_b2) is None
    # B's job arrives on the first slot, and says another waits behind it:
    # the second slot, free, goes to B now, and A's open offer is held.
    b1.dataReceived(job(b"/b1", 0.004))
    assert answered(at_b2) == b"take"
    assert at_a2.value() == HOLD_NOTICE


@pytest.mark.unit
def test_a_hub_told_to_take_by_one_slot_is_told_to_take_by_the_next_too():
    """
    Its job for the first slot is on its way, so what is behind it is not
    known yet; it very likely has more, so the next slot it served is
    told "take" (it bids "none" if it has nothing), not "open" (which
    another hub's news could withdraw as its job crosses the notice).
    """
    calls: list = []
    lines, clock = HubLines(), Clock()
    first_pool, second_pool = Waiting(), Waiting()
    first, [(a1, at_a1), (b1, _)], _ = offered(2, calls, first_pool, clock, lines)
    second, [(a2, at_a2), (b2, _)], _ = offered(2, calls, second_pool, clock, lines)
    for client in (a1, b1, a2, b2):
        client.dataReceived(bid_request(None))
    a1.dataReceived(job(b"/a1", None))
    a2.dataReceived(job(b"/a2", 0.003))
    at_a1.clear()
    at_a2.clear()
    finish(second_pool)
    assert after_response(at_a2) == b"take"
    finish(first_pool)
    assert after_response(at_a1) == b"take"
