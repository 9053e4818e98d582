"""
The hub's limits and timeouts, driven through in-memory transports and a
fake clock.
"""

from __future__ import annotations

import pytest
from twisted.python.failure import Failure

from tests.harness import GET, HubHarness, header, status

pytestmark = pytest.mark.unit


def test_queue_full_is_503_with_retry_after():
    """
    A request arriving at a full queue gets 503 with Retry-After at once;
    those already queued keep their place.
    """
    harness = HubHarness(max_queue=2, retry_after=7)
    queued = [harness.consumer(GET) for _ in range(2)]
    _, refused = harness.consumer(GET)
    assert status(refused) == b"HTTP/1.1 503 Service Unavailable"
    assert header(refused, b"Retry-After") == b"7"
    assert harness.pool.queued == 2
    assert all(transport.value() == b"" for _, transport in queued)


def test_queue_timeout_is_503_and_leaves_queue():
    """
    A job that waits longer than the queue timeout gets 503 with
    Retry-After and leaves the queue.
    """
    harness = HubHarness(queue_timeout=5)
    _, transport = harness.consumer(GET)
    harness.clock.advance(4.9)
    assert transport.value() == b""
    harness.clock.advance(0.2)
    assert status(transport) == b"HTTP/1.1 503 Service Unavailable"
    assert header(transport, b"Retry-After") == b"5"
    assert harness.pool.queued == 0


def test_request_timeout_while_queued_is_504():
    """
    A request timeout shorter than the queue timeout answers 504 from the
    queue.
    """
    harness = HubHarness(queue_timeout=60, request_timeout=3)
    _, transport = harness.consumer(GET)
    harness.clock.advance(3.1)
    assert status(transport) == b"HTTP/1.1 504 Gateway Timeout"
    assert harness.pool.queued == 0


def test_one_timer_watches_the_whole_queue():
    """
    However many jobs wait, the pool keeps one timer for them, set for the
    first one due; they still leave one by one at their own deadlines.
    """
    harness = HubHarness(queue_timeout=5)
    transports = []
    for _ in range(50):
        transports.append(harness.consumer(GET)[1])
        harness.clock.advance(0.01)
    expiries = [c for c in harness.clock.getDelayedCalls() if "_expire" in repr(c.func)]
    assert len(expiries) == 1 and harness.pool.queued == 50
    # Job i joined at i * 0.01 s: at 5.245 s the first 25 are due.
    harness.clock.advance(5.245 - 0.5)
    assert [bool(t.value()) for t in transports] == [True] * 25 + [False] * 25
    assert harness.pool.queued == 25
    harness.clock.advance(0.5)
    assert all(status(t) == b"HTTP/1.1 503 Service Unavailable" for t in transports)
    assert harness.pool.queued == 0
    assert not [c for c in harness.clock.getDelayedCalls() if "_expire" in repr(c.func)]


def test_job_put_back_at_the_head_does_not_shield_those_behind_it():
    """
    A job a worker handed back goes to the head of the queue with a fresh
    queue timeout; the jobs behind it, due earlier, still leave on time.
    """
    harness = HubHarness(queue_timeout=10)
    slot, worker_transport = harness.worker()
    _, first = harness.consumer(GET)
    assert worker_transport.value().startswith(b"GET /job")
    harness.clock.advance(1)
    _, second = harness.consumer(GET)
    harness.clock.advance(7)
    slot.dataReceived(
        b"HTTP/1.1 503 Service Unavailable\r\nPothead-Requeue: 1\r\nContent-Length: 0\r\n\r\n"
    )
    assert harness.pool.queued == 2
    harness.clock.advance(3.1)
    assert status(second) == b"HTTP/1.1 503 Service Unavailable"
    assert first.value() == b"" and harness.pool.queued == 1
    harness.clock.advance(7)
    assert status(first) == b"HTTP/1.1 503 Service Unavailable"
    assert harness.pool.queued == 0


def test_request_timeout_while_served_drops_worker():
    """
    A worker that has not answered by the request timeout: the consumer
    gets 504 and that worker connection is closed, so a late answer can
    reach no one.
    """
    harness = HubHarness(request_timeout=10)
    slot, worker_transport = harness.worker()
    _, transport = harness.consumer(GET)
    assert worker_transport.value().startswith(b"GET /job HTTP/1.1\r\n")
    harness.clock.advance(10.1)
    assert status(transport) == b"HTTP/1.1 504 Gateway Timeout"
    assert worker_transport.disconnecting
    slot.connectionLost(Failure(ConnectionError()))
    assert harness.pool.slots == set()


def test_response_head_stops_request_timeout():
    """
    Once the worker's response head has arrived, the request timeout no
    longer applies: a long download is not cut off.
    """
    harness = HubHarness(request_timeout=10)
    slot, worker_transport = harness.worker()
    _, transport = harness.consumer(GET)
    slot.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345")
    harness.clock.advance(60)
    assert status(transport) == b"HTTP/1.1 200 OK"
    assert not worker_transport.disconnecting
    slot.dataReceived(b"67890")
    assert transport.value().endswith(b"\r\n\r\n1234567890")
    assert harness.pool.idle == 1


def stall_watches(harness: HubHarness) -> list:
    return [call for call in harness.clock.getDelayedCalls()
            if call.active() and call.func.__name__ == "_time_up"]


def test_stalled_response_cuts_off_consumer_and_worker():
    """
    A response from which nothing has come for the stall timeout (the
    worker stopped sending, or was held back that long by a consumer that
    stopped reading): the consumer is cut off, never handed a short body
    as complete, and so is the worker's slot, which no one else could
    use while it waits.  A response that keeps coming, however slowly,
    is never cut.
    """
    harness = HubHarness(request_timeout=10, stall_timeout=30)
    slot, worker_transport = harness.worker()
    _, transport = harness.consumer(GET)
    slot.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
    for _ in range(5):
        harness.clock.advance(20)
        slot.dataReceived(b"x")
    assert not transport.disconnecting and not worker_transport.disconnecting
    harness.clock.advance(29.9)
    assert not transport.disconnecting
    harness.clock.advance(0.2)
    assert transport.disconnected and worker_transport.disconnected
    assert transport.value().endswith(b"\r\n\r\nxxxxx")
    slot.connectionLost(Failure(ConnectionError()))
    assert harness.pool.slots == set() and stall_watches(harness) == []


def test_stall_watch_ends_with_the_response():
    harness = HubHarness(stall_timeout=30)
    slot, worker_transport = harness.worker()
    _, transport = harness.consumer(GET)
    slot.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert status(transport) == b"HTTP/1.1 200 OK"
    assert stall_watches(harness) == []
    harness.clock.advance(60)
    assert not worker_transport.disconnecting and harness.pool.idle == 1


def test_body_over_limit_by_content_length_is_413_before_reading():
    """
    A Content-Length over the limit is refused from the head, before any
    body byte and without 100 Continue.
    """
    harness = HubHarness(max_body_bytes=100)
    _, transport = harness.consumer(
        b"POST / HTTP/1.1\r\nHost: hub\r\nExpect: 100-continue\r\nContent-Length: 101\r\n\r\n"
    )
    assert status(transport) == b"HTTP/1.1 413 Content Too Large"
    assert b"100 Continue" not in transport.value()
    assert transport.disconnecting
    assert harness.pool.queued == 0


def test_chunked_body_over_limit_is_413():
    """
    A chunked body is refused as soon as it passes the limit.
    """
    harness = HubHarness(max_body_bytes=100)
    _, transport = harness.consumer(
        b"POST / HTTP/1.1\r\nHost: hub\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"40\r\n" + b"a" * 64 + b"\r\n" + b"40\r\n" + b"a" * 64 + b"\r\n"
    )
    assert status(transport) == b"HTTP/1.1 413 Content Too Large"
    assert transport.disconnecting
    assert harness.pool.queued == 0


def test_body_at_limit_accepted():
    """
    A body exactly at the limit is queued.
    """
    harness = HubHarness(max_body_bytes=100)
    harness.consumer(b"POST / HTTP/1.1\r\nHost: hub\r\nContent-Length: 100\r\n\r\n" + b"a" * 100)
    assert harness.pool.queued == 1


@pytest.mark.parametrize(
    "data, code",
    [
        (b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\n", b"414"),
        (b"GET / HTTP/1.1\r\n" + b"X-Big: " + b"a" * 2000 + b"\r\n\r\n", b"431"),
        (b"GET / HTTP/1.1\r\n" + b"X-A: aaaaaaaaaa\r\n" * 200, b"431"),
        (b"GET /" + b"a" * 5000, b"414"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 garbage\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n", b"400"),
        (b"POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n", b"400"),
    ],
)
def test_bad_heads_refused(data, code):
    """
    Oversized request lines and headers, and garbage, get their status
    code and a closed connection.
    """
    harness = HubHarness(max_header_bytes=1024)
    _, transport = harness.consumer(data)
    assert status(transport).split(b" ")[1] == code
    assert b"\r\nConnection: close\r\n" in transport.value()
    assert transport.disconnecting
    assert harness.pool.queued == 0


def test_headers_up_to_limit_accepted():
    """
    A head just under the limit is queued.
    """
    harness = HubHarness(max_header_bytes=64 * 1024)
    cookie = b"Cookie: " + b"c" * 1000
    head = b"GET / HTTP/1.1\r\nHost: hub\r\n" + (cookie + b"\r\n") * 60 + b"\r\n"
    assert 60_000 < len(head) < 64 * 1024
    harness.consumer(head)
    assert harness.pool.queued == 1


def test_trickled_head_times_out():
    """
    A consumer that trickles its request head past the header timeout
    gets 408, however steadily it sends.
    """
    harness = HubHarness(header_timeout=5)
    channel, transport = harness.consumer(b"GET / HTTP/1.1\r\n")
    for _ in range(4):
        harness.clock.advance(1)
        channel.dataReceived(b"X-Slow: 1\r\n")
    assert transport.value() == b""
    harness.clock.advance(1.1)
    assert status(transport) == b"HTTP/1.1 408 Request Timeout"
    assert transport.disconnecting


def test_trickled_body_times_out():
    """
    A consumer that sends its body too slowly gets 408.
    """
    harness = HubHarness(body_timeout=10)
    channel, transport = harness.consumer(
        b"POST / HTTP/1.1\r\nHost: hub\r\nContent-Length: 100\r\n\r\n"
    )
    for _ in range(9):
        harness.clock.advance(1)
        channel.dataReceived(b"a")
    harness.clock.advance(1.1)
    assert status(transport) == b"HTTP/1.1 408 Request Timeout"
    assert harness.pool.queued == 0


def test_deadlines_cleared_for_complete_requests():
    """
    A complete request leaves no receive deadline running.
    """
    harness = HubHarness(header_timeout=5, body_timeout=5, queue_timeout=1000, request_timeout=1000)
    channel, transport = harness.consumer(
        b"POST / HTTP/1.1\r\nHost: hub\r\nContent-Length: 3\r\n\r\nabc"
    )
    harness.clock.advance(100)
    assert transport.value() == b""
    assert harness.pool.queued == 1


def test_detach_notice_read_with_last_response():
    """
    A detach notice that arrives in the same read as the end of the
    previous response still ends the slot: the next job waits for another
    worker instead of being sent down a closing connection.
    """
    from pothead.attach import DETACH_NOTICE

    harness = HubHarness()
    slot, worker_transport = harness.worker()
    _, first = harness.consumer(GET)
    worker_transport.clear()
    slot.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + DETACH_NOTICE)
    assert first.value().endswith(b"\r\n\r\nok")
    assert worker_transport.disconnecting
    harness.consumer(b"POST /next HTTP/1.1\r\nHost: hub\r\nContent-Length: 1\r\n\r\nx")
    assert worker_transport.value() == b""
    assert harness.pool.queued == 1


def test_detach_notice_on_an_idle_slot():
    """
    A detach notice on an idle slot ends it at once: a job that arrives
    before the connection is actually closed waits for another worker
    instead of being sent down the closing connection (where a POST would
    end as a 502).
    """
    from pothead.attach import DETACH_NOTICE

    harness = HubHarness()
    slot, worker_transport = harness.worker()
    assert harness.pool.idle == 1
    slot.dataReceived(DETACH_NOTICE)
    assert worker_transport.disconnecting and harness.pool.idle == 0
    harness.consumer(b"POST /next HTTP/1.1\r\nHost: hub\r\nContent-Length: 1\r\n\r\nx")
    assert worker_transport.value() == b""
    assert harness.pool.queued == 1


def test_head_read_whole_arms_no_receive_timer():
    """
    A request head that arrives in one read needs no head deadline: no
    timer is created for it (thousands of queued consumers would each
    leave a cancelled one behind).
    """
    harness = HubHarness(header_timeout=5, queue_timeout=1000, request_timeout=1000)
    channel, _ = harness.consumer()
    armed: list[float] = []
    call_later = harness.clock.callLater

    def counting_call_later(delay, *args, **kwargs):
        armed.append(delay)
        return call_later(delay, *args, **kwargs)

    harness.clock.callLater = channel.callLater = counting_call_later
    channel.dataReceived(GET)
    # The job's queue timer, and no head deadline.
    assert armed == [1000]
    assert harness.pool.queued == 1


def test_pause_mid_body_bounded_by_body_timeout_not_idle_timeout():
    """
    A consumer that pauses longer than Twisted's 60 s idle timeout in the
    middle of its body is not cut off; the body timeout decides.
    """
    harness = HubHarness(body_timeout=300)
    channel, transport = harness.consumer(
        b"POST / HTTP/1.1\r\nHost: hub\r\nContent-Length: 10\r\n\r\n12345"
    )
    harness.clock.advance(90)
    assert not transport.disconnecting
    channel.dataReceived(b"67890")
    assert harness.pool.queued == 1


def test_idle_keep_alive_connection_still_times_out():
    """
    Between requests, an idle consumer connection is closed after
    Twisted's idle timeout as before.
    """
    harness = HubHarness()
    channel, transport = harness.consumer()
    harness.clock.advance(61)
    assert transport.disconnecting
