"""
Hub and worker services in one reactor, talking over real loopback sockets.
"""

from __future__ import annotations

import threading
import time

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.harness import WAIT, wait_for
from tests.http import Client, fetch

pytestmark = pytest.mark.net


def echo_path(environ, start_response):
    body = (environ.get("PATH_INFO", "") + "?" + environ.get("QUERY_STRING", "")).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


class ConcurrencyProbe:
    """
    A WSGI app that sleeps a little and records how many of its calls
    overlapped, and in what order requests started.
    """

    def __init__(self, delay: float = 0.02) -> None:
        self.delay = delay
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.order: list[str] = []

    def __call__(self, environ, start_response):
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.order.append(environ["PATH_INFO"])
        try:
            time.sleep(self.delay)
        finally:
            with self.lock:
                self.running -= 1
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]


@pytest_twisted.ensureDeferred
async def test_request_answered_through_hub(running_hub):
    """
    A consumer request reaches the worker's app and its answer comes back.
    """
    await running_hub.add_worker(echo_path)
    response, body = await fetch("GET", running_hub.url + "/a/b?c=d")
    assert response.code == 200
    assert body == b"/a/b?c=d"


@pytest_twisted.ensureDeferred
async def test_fifo_order_with_one_slot(running_hub):
    """
    With one slot busy and twenty requests queued behind it, the worker
    runs them in the order they arrived.
    """
    gate = threading.Event()
    probe = ConcurrencyProbe(delay=0.001)

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/first":
            gate.wait(WAIT)
        return probe(environ, start_response)

    await running_hub.add_worker(app, slots=1)
    client = Client(persistent=False)
    try:
        first = defer.ensureDeferred(client.request("GET", running_hub.url + "/first"))
        await wait_for(lambda: running_hub.pool.idle == 0, what="the slot to be busy")
        queued = []
        for i in range(20):
            queued.append(defer.ensureDeferred(client.request("GET", f"{running_hub.url}/{i}")))
            await wait_for(lambda n=i + 1: running_hub.pool.queued == n, what=f"request {i} queued")
        gate.set()
        results = await defer.gatherResults([first, *queued])
    finally:
        gate.set()
        await client.close()
    assert [r.code for r, _ in results] == [200] * 21
    assert probe.order == ["/first"] + [f"/{i}" for i in range(20)]


@pytest_twisted.ensureDeferred
async def test_slots_bound_concurrency(running_hub):
    """
    A worker with three slots runs three requests at once, and never more.
    """
    probe = ConcurrencyProbe(delay=0.05)
    await running_hub.add_worker(probe, slots=3)
    client = Client()
    try:
        results = await defer.gatherResults(
            [
                defer.ensureDeferred(client.request("GET", f"{running_hub.url}/{i}"))
                for i in range(12)
            ]
        )
    finally:
        await client.close()
    assert [r.code for r, _ in results] == [200] * 12
    assert probe.most == 3


@pytest_twisted.ensureDeferred
async def test_tcp_keepalive_and_nodelay_on_hub_and_worker_sockets(running_hub):
    """
    Both ends of a slot have TCP keepalive on, so a peer that vanished
    silently is noticed, and Nagle's algorithm off, so a response's last small segment is
    not held back; so has the hub's end of a consumer connection.
    """
    import socket

    service = await running_hub.add_worker(echo_path)
    (slot,) = running_hub.pool.slots
    (client,) = service.slots[0].clients
    consumer = socket.create_connection(("127.0.0.1", running_hub.consumer_port), timeout=5)
    try:
        await wait_for(lambda: running_hub.consumer_transports(), what="the consumer connection")
        (consumer_side,) = running_hub.consumer_transports()
        for sock in (slot.transport.getHandle(), client.transport.getHandle(),
                     consumer_side.getHandle()):
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        consumer.close()


def echo_body(environ, start_response):
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length)
    start_response("200 OK", [("Content-Type", environ.get("CONTENT_TYPE", "")),
                              ("Content-Length", str(len(body)))])
    return [body]


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize(
    "content_type, body",
    [
        (b"multipart/form-data; boundary=xyz", b"no boundary line here"),
        (b"multipart/form-data; boundary=b", b"--b\r\nContent-Disposition: form-data; "
         b"name=\"f\"\r\n\r\nvalue\r\n--b--\r\n"),
        (b"application/x-www-form-urlencoded", b"a=1&b=%ZZ&&=x"),
    ],
    ids=["malformed-multipart", "multipart", "urlencoded"],
)
async def test_form_bodies_reach_the_app_untouched(running_hub, content_type, body):
    """
    Neither the hub nor the worker parses a form upload for itself (Twisted
    does by default: the whole body in memory, and a 400 of its own for a
    multipart body it cannot parse); the app gets the bytes the consumer
    sent and answers as it would anywhere else.
    """
    await running_hub.add_worker(echo_body)
    response, echoed = await fetch(
        "POST", running_hub.url + "/form", data=body, headers={b"Content-Type": [content_type]}
    )
    assert (response.code, echoed) == (200, body)
