"""
A slot's job loop, seen from the hub (pothead/slot.py): the order in
which a free worker and a finished consumer are served.
"""

from __future__ import annotations

from tests.test_limits import GET, HubHarness, status

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
