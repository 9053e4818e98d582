"""
The hubs a worker offers its slots to: a name that resolves to several
addresses is that many hubs, resolved again every interval; hubs whose
address appears are joined and those whose address disappears are left,
through an injected resolver (not /etc/hosts).
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import succeed
from twisted.internet.endpoints import clientFromString
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor

from pothead.worker.hubs import HubSet, at_address, named_host
from pothead.worker.service import worker_service
from tests.harness import wait_for
from tests.http import fetch
from tests.loopback import start_hub


class Names:
    """A resolver answering from a dict the test changes, as DNS would."""

    def __init__(self, **names: list[str]) -> None:
        self.names = names

    def resolveHostName(self, receiver, hostName, portNumber=0, addressTypes=None,
                        transportSemantics="TCP"):
        receiver.resolutionBegan(None)
        for address in self.names.get(hostName, []):
            receiver.addressResolved(IPv4Address("TCP", address, portNumber))
        receiver.resolutionComplete()
        return receiver


class Joined:
    """What a HubSet joined and left, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def join(self, endpoint: str):
        self.events.append(("join", endpoint))
        joined = self

        class Offers:
            def leave(self):
                joined.events.append(("leave", endpoint))
                return succeed(None)

        return Offers()


@pytest.mark.unit
@pytest.mark.parametrize("description, named", [
    ("tcp:hubs.example:4040", ("hubs.example", "4040")),
    ("tls:hubs.example:4040:trustRoots=/ca", ("hubs.example", "4040")),
    ("tcp:127.0.0.1:4040", None),
    ("tcp:host=hubs.example:port=4040", None),
    ("unix:/run/hub.sock", None),
    ("tcp6:\\:\\:1:4040", None),
    ("tcp:fd00\\:\\:1:4040", None),
])
def test_which_hub_endpoints_are_names(description, named):
    assert named_host(description) == named


@pytest.mark.unit
def test_an_address_of_a_name_as_an_endpoint():
    """
    A tcp: endpoint connects to the address; a tls: one too, through an
    endpoint= at the address, still checking the certificate against the
    name.
    """
    assert at_address("tcp:hubs.example:4040:timeout=5", "10.0.0.7") == "tcp:10.0.0.7:4040:timeout=5"
    assert at_address("tcp:hubs.example:4040", "fd00::7") == "tcp6:fd00\\:\\:7:4040"
    tls = at_address("tls:hubs.example:4040:trustRoots=/ca", "10.0.0.7")
    assert tls == "tls:hubs.example:4040:trustRoots=/ca:endpoint=tcp\\:10.0.0.7\\:4040"
    # Twisted's endpoints built from them connect to the address, not the
    # name (a tls: one without trustRoots checks against the platform's).
    for description in ("tcp:hubs.example:4040", "tls:hubs.example:4040"):
        memory = MemoryReactor()
        clientFromString(memory, at_address(description, "10.0.0.7")).connect(Factory())
        assert [(host, port) for host, port, *_ in memory.tcpClients] == [("10.0.0.7", 4040)]


@pytest.mark.unit
def test_a_name_is_a_hub_per_address_resolved_again_every_interval():
    """
    Three addresses are three hubs; one gone from DNS is left, one new is
    joined; a moment with no address at all keeps the hubs it had.
    """
    clock = Clock()
    names = Names(**{"hubs.example": ["10.0.0.1", "10.0.0.2", "10.0.0.3"]})
    joined = Joined()
    counts: list[int] = []
    hubs = HubSet(["tcp:hubs.example:4040", "unix:/run/other.sock"], joined.join, names,
                  clock, interval=5.0, changed=counts.append)
    hubs.startService()
    assert sorted(joined.events) == sorted([
        ("join", "unix:/run/other.sock"),
        ("join", "tcp:10.0.0.1:4040"), ("join", "tcp:10.0.0.2:4040"), ("join", "tcp:10.0.0.3:4040"),
    ])
    assert counts[-1] == 4
    joined.events.clear()
    names.names["hubs.example"] = ["10.0.0.2", "10.0.0.3", "10.0.0.4"]
    clock.advance(5.0)
    assert sorted(joined.events) == [("join", "tcp:10.0.0.4:4040"), ("leave", "tcp:10.0.0.1:4040")]
    joined.events.clear()
    names.names["hubs.example"] = []
    clock.advance(5.0)
    assert joined.events == [] and counts[-1] == 4
    hubs.stopService()
    assert clock.getDelayedCalls() == []


@pytest.mark.unit
def test_a_dual_stack_name_is_one_hub_per_ipv4_address():
    """
    A name with IPv4 and IPv6 addresses (localhost, a dual-stack pod) is
    a hub per IPv4 address, not twice as many; one with only IPv6
    addresses is a hub per IPv6 address.
    """
    clock = Clock()
    names = Names(**{"localhost": ["127.0.0.1", "::1"], "v6only": ["fd00::1", "fd00::2"]})
    joined = Joined()
    hubs = HubSet(["tcp:localhost:4040", "tcp:v6only:4040"], joined.join, names, clock)
    hubs.startService()
    assert sorted(endpoint for _, endpoint in joined.events) == [
        "tcp6:fd00\\:\\:1:4040", "tcp6:fd00\\:\\:2:4040", "tcp:127.0.0.1:4040",
    ]
    hubs.stopService()


@pytest.mark.net
@pytest_twisted.ensureDeferred
async def test_one_name_for_two_hubs():
    """
    A worker given one name that resolves to two loopback addresses
    (127.0.0.1 and 127.0.0.2, through an injected resolver) serves
    through both hubs listening there.
    """
    first = await start_hub()
    second = await start_hub(interface="127.0.0.2", port=first.worker_port)
    calls: list[str] = []

    def app(environ, start_response):
        calls.append(environ["PATH_INFO"])
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    names = Names(**{"hubs.test": ["127.0.0.1", "127.0.0.2"]})
    worker = worker_service(reactor, app, [f"tcp:hubs.test:{first.worker_port}"], 1,
                            resolver=names, resolve_interval=0.2)
    worker.startService()
    try:
        await wait_for(lambda: first.pool.idle == 1 and second.pool.idle == 1,
                       what="the slot offered at both addresses")
        for hub, path in ((first, "/one"), (second, "/two")):
            response, body = await fetch("GET", hub.url + path)
            assert (response.code, body) == (200, b"ok")
        assert calls == ["/one", "/two"]
        names.names["hubs.test"] = ["127.0.0.1"]
        await wait_for(lambda: len(second.pool.slots) == 0, what="the hub gone from DNS left")
        response, body = await fetch("GET", first.url + "/three")
        assert (response.code, body) == (200, b"ok")
    finally:
        await worker.stopService()
        await first.stop()
        await second.stop()
