"""
Backpressure on the worker: an app's large response is read from it only
as fast as the consumer takes it, through hub and worker.
"""

from __future__ import annotations

import pytest_twisted
from twisted.internet import reactor

from pothead.flow import GATE_KEY, FlowControlledWSGIResource, flow_controlled
from tests.conftest import wait_for
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
