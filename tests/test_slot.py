"""
A slot's job loop, seen from the hub (pothead/slot.py): the order in
which a free worker and a finished consumer are served, and a body whose
sending the worker's early answer cuts short.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet.error import ConnectionLost
from twisted.internet.task import cooperate
from twisted.python.failure import Failure

from pothead.attach import DETACH_NOTICE
from pothead.hub.body import INLINE_BODY
from tests.harness import GET, HubHarness, status, wait_for

pytestmark = pytest.mark.unit

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def at_each_answer(harness: HubHarness, look) -> list:
    """
    Record C{look()} at each moment the hub completes a consumer's
    response.
    """
    moments: list = []
    answered = harness.site.answered

    def record(request) -> None:
        moments.append(look())
        answered(request)

    harness.site.answered = record
    return moments


def test_next_job_sent_before_the_consumer_is_answered():
    """
    With a job waiting, the worker is sent it before the hub completes
    the consumer's response to the last one: the worker does not sit idle
    while the hub finishes with a consumer.
    """
    harness = HubHarness()
    slot, worker_transport = harness.worker()
    _, first = harness.consumer(GET)
    _, second = harness.consumer(b"GET /second HTTP/1.1\r\nHost: hub\r\n\r\n")
    assert harness.pool.queued == 1
    worker_transport.clear()
    moments = at_each_answer(harness, worker_transport.value)
    slot.dataReceived(OK)
    assert len(moments) == 1 and moments[0].startswith(b"GET /second HTTP/1.1\r\n")
    assert status(first) == b"HTTP/1.1 200 OK" and first.value().endswith(b"\r\n\r\nok")
    assert second.value() == b"" and harness.pool.queued == 0
    slot.dataReceived(OK)
    assert status(second) == b"HTTP/1.1 200 OK"
    assert harness.pool.idle == 1


def test_without_a_waiting_job_the_consumer_is_answered_first():
    """
    With nothing queued, the consumer's response is completed first and
    the slot then waits in line.
    """
    harness = HubHarness()
    slot, worker_transport = harness.worker()
    _, consumer = harness.consumer(GET)
    worker_transport.clear()
    moments = at_each_answer(harness, lambda: (worker_transport.value(), harness.pool.idle))
    slot.dataReceived(OK)
    assert moments == [(b"", 0)]
    assert status(consumer) == b"HTTP/1.1 200 OK" and harness.pool.idle == 1


#: A body large enough to be streamed to the worker, not written at once.
BODY = bytes(range(256)) * (4 * INLINE_BODY // 256)
POST = b"POST /up HTTP/1.1\r\nHost: hub\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)


@pytest_twisted.ensureDeferred
async def test_early_answer_stops_the_upload_and_closes_the_slot():
    """
    A worker that answers before the hub has sent the whole body (an app
    that refuses an upload unread) gets no more of it: the consumer has
    its answer, and the slot, which cannot be reused, is closed at once
    instead of waiting for a body nobody reads.
    """
    harness = HubHarness()
    slot, worker_transport = harness.worker()
    _, consumer = harness.consumer(POST)
    assert worker_transport.value().startswith(b"POST /up HTTP/1.1\r\n")
    slot.dataReceived(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n\r\n")
    assert status(consumer) == b"HTTP/1.1 413 Content Too Large"
    assert worker_transport.disconnecting and worker_transport.producer is None
    sent = worker_transport.value()
    # Large bodies stream on Twisted's global cooperator: once it has
    # turned three times for a task of ours, a body producer still running
    # would have written in those turns.
    await cooperate(iter(range(3))).whenDone()
    assert worker_transport.value() == sent


@pytest_twisted.ensureDeferred
async def test_body_of_a_handed_back_job_reaches_the_next_slot_whole():
    """
    A job handed back while its body is being sent (the worker detached)
    goes to the next slot with its body whole, read from the start, and
    the first slot sends no more of it.
    """
    harness = HubHarness()
    first, first_transport = harness.worker()
    harness.consumer(POST)
    first.dataReceived(DETACH_NOTICE)
    assert first_transport.disconnecting and first_transport.producer is None
    sent = first_transport.value()
    # The harness clears what the hub wrote while the slot attached: the
    # job's head, written at once; the body follows on the reactor's turns.
    second, second_transport = harness.worker()
    await wait_for(lambda: len(second_transport.value()) >= len(BODY), what="the body")
    assert second_transport.value() == BODY
    assert first_transport.value() == sent


def test_consumer_gone_after_the_worker_leaves_the_lost_slot_alone():
    """
    A worker lost mid-response breaks the consumer's response; when the
    consumer's connection then closes, the job does not abort the slot's
    connection again (a TLS transport raises on an abort once lost).
    """
    harness = HubHarness()
    slot, worker_transport = harness.worker()
    consumer_channel, consumer = harness.consumer(GET)
    slot.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
    aborts: list[bool] = []
    worker_transport.abortConnection = lambda: aborts.append(True)
    slot.connectionLost(Failure(ConnectionLost()))
    consumer_channel.connectionLost(Failure(ConnectionLost()))
    assert aborts == [] and consumer.value().endswith(b"half")
