"""
The worker's WSGI container: an app's large response is read from it only
as fast as the consumer takes it, and calls from app threads reach the
reactor in batches.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.logger import capturedLogs

from pothead.worker.flow import GATE_KEY, BatchedCalls, FlowControlledWSGIResource, flow_controlled
from tests.harness import wait_for
from tests.peers import MIB, held_back_then_drained, paused_consumer

CHUNK = b"y" * (64 * 1024)
RESPONSE_BYTES = 256 * MIB


class BigGenerator:
    """
    A WSGI app yielding RESPONSE_BYTES in chunks, counting what it yielded.
    """

    def __init__(self) -> None:
        self.yielded = 0
        self.environ_keys: set = set()

    def __call__(self, environ, start_response):
        self.environ_keys = set(environ)
        start_response("200 OK", [("Content-Length", str(RESPONSE_BYTES))])
        return self.chunks()

    def chunks(self):
        while self.yielded < RESPONSE_BYTES:
            self.yielded += len(CHUNK)
            yield CHUNK


@pytest.mark.net
@pytest_twisted.ensureDeferred
async def test_slow_consumer_pauses_the_app(running_hub):
    """
    While the consumer reads nothing, the app is asked for no more than the
    buffers between it and the consumer hold; then the whole body arrives.
    """
    app = BigGenerator()
    await running_hub.add_worker(app)
    consumer = await paused_consumer(running_hub)
    await wait_for(lambda: app.yielded > 0, what="the app to start")

    held_back = await held_back_then_drained(consumer, lambda: app.yielded, RESPONSE_BYTES)
    assert held_back < 64 * MIB, f"the app was read {held_back / MIB:.0f} MiB ahead"
    assert GATE_KEY not in app.environ_keys


@pytest.mark.unit
def test_private_wsgi_response_pinned():
    """
    The private twisted.web.wsgi names flow.py builds on still exist with
    the shape it uses.
    """
    from twisted.web.server import Request
    from twisted.web.test.requesthelper import DummyChannel
    from twisted.web.wsgi import _WSGIResponse

    resource = FlowControlledWSGIResource(reactor, object(), flow_controlled(lambda e, s: []))
    for name in ("_reactor", "_threadpool", "_application"):
        assert hasattr(resource, name)
    for name in ("start", "run", "write", "startResponse", "_sendResponseHeaders"):
        assert callable(getattr(_WSGIResponse, name))
    request = Request(DummyChannel(), False)
    request.method, request.uri, request.path = b"GET", b"/", b"/"
    request.prepath, request.postpath = [], [b""]
    response = _WSGIResponse(reactor, object(), lambda e, s: [], request)
    assert (response.started, response.reactor, response.request) == (False, reactor, request)
    assert isinstance(response.environ, dict)


class RecordingReactor:
    """
    Just C{callFromThread}, recording each call instead of running it, so
    a test decides when "the reactor" gets to them.
    """

    def __init__(self) -> None:
        self.handed_over: list = []

    def callFromThread(self, f, *args, **kwargs) -> None:
        self.handed_over.append(lambda: f(*args, **kwargs))

    def run_pending(self) -> None:
        pending, self.handed_over = self.handed_over, []
        for call in pending:
            call()


@pytest.mark.unit
def test_batched_calls_wake_the_reactor_once_and_keep_order():
    """
    Calls handed over before the reactor gets to them run in one wake-up,
    in the order they were made; a call made after that wakes it again.
    """
    fake = RecordingReactor()
    calls = BatchedCalls(fake)
    ran: list = []
    calls.callFromThread(ran.append, "write")
    calls.callFromThread(ran.append, "finish")
    calls.callFromThread(lambda **kw: ran.append(kw), ended=True)
    assert (len(fake.handed_over), ran) == (1, [])
    fake.run_pending()
    assert ran == ["write", "finish", {"ended": True}]

    calls.callFromThread(ran.append, "next")
    assert len(fake.handed_over) == 1
    fake.run_pending()
    assert ran[-1] == "next" and fake.handed_over == []


@pytest.mark.unit
def test_batched_call_that_fails_is_logged_and_the_rest_run():
    """
    One failing call (a response whose connection is gone, say) neither
    loses the calls after it nor stops the batching.
    """
    fake = RecordingReactor()
    calls = BatchedCalls(fake)
    ran: list = []
    calls.callFromThread(lambda: 1 / 0)
    calls.callFromThread(ran.append, "after")
    with capturedLogs() as events:
        fake.run_pending()
    assert ran == ["after"]
    assert [e["log_failure"].type for e in events if "log_failure" in e] == [ZeroDivisionError]
    calls.callFromThread(ran.append, "again")
    fake.run_pending()
    assert ran == ["after", "again"]
