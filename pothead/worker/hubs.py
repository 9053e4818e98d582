"""
The hubs a worker offers its slots to: one per ``--hub`` endpoint, and for
a ``tcp:`` or ``tls:`` endpoint that names its host, one per address the
name resolves to, resolved again every ``--resolve-interval``.

That is how POTHEAD 0.4.3 found its hubs behind a Kubernetes headless
service: one name, an address per hub pod (its IPv4 addresses, or its
IPv6 ones if it has none: a dual-stack hub is one hub).  A hub whose address appears
is joined (every slot offered to it, see L{pothead.worker.attach_client});
one whose address disappears is left once the jobs it gave are done, and
no other hub's offers are touched.  An endpoint of any other kind (an IP
address, ``unix:``, a ``host=`` keyword form) is one hub, as given.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Callable, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHostnameResolver, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

_log = Logger()

#: Seconds between two resolutions of a hub's name.
DEFAULT_RESOLVE_INTERVAL = 5.0

#: An endpoint description's fields are separated by colons not escaped.
_FIELDS = re.compile(r"(?<!\\):")


class Offers(Protocol):
    """
    A hub joined: the worker's offers there.
    """

    def leave(self) -> Deferred[None]:
        """Take every offer back once the jobs this hub gave are done."""


def named_host(description: str) -> tuple[str, str] | None:
    """
    The host name and port of a C{tcp:HOST:PORT…} or C{tls:HOST:PORT…}
    description whose host is a name, not an address; L{None} otherwise.
    """
    fields = _FIELDS.split(description)
    if len(fields) < 3 or fields[0] not in ("tcp", "tls") or "=" in fields[1] + fields[2]:
        return None
    try:
        ipaddress.ip_address(fields[1].replace("\\:", ":"))
    except ValueError:
        return fields[1], fields[2]
    return None


def at_address(description: str, address: str) -> str:
    """
    C{description}, a C{tcp:} or C{tls:} one that names its host, made to
    connect to C{address}: a C{tcp:} one with the address for the host; a
    C{tls:} one through an C{endpoint=} at that address, so that the
    hub's certificate is still checked against the name.
    """
    kind, host, port, *rest = _FIELDS.split(description)
    ip = ipaddress.ip_address(address)
    tcp = "tcp6" if ip.version == 6 else "tcp"
    escaped = address.replace(":", "\\:")
    if kind == "tcp":
        return ":".join([tcp, escaped, port, *rest])
    inner = f"{tcp}:{escaped}:{port}".replace("\\", "\\\\").replace(":", "\\:")
    return ":".join([kind, host, port, *rest, f"endpoint={inner}"])


class _Addresses:
    """An IResolutionReceiver collecting the addresses of one name."""

    def __init__(self) -> None:
        self.addresses: list[str] = []
        self.done: Deferred[list[str]] = Deferred()

    def resolutionBegan(self, resolution) -> None:
        pass

    def addressResolved(self, address) -> None:
        if address.host not in self.addresses:
            self.addresses.append(address.host)

    def resolutionComplete(self) -> None:
        # A dual-stack hub has an address of each family: one hub, not two.
        # Its IPv4 addresses count, as Twisted's own tcp: endpoint connects
        # over IPv4; a name with only IPv6 addresses counts those.
        ipv4 = [a for a in self.addresses if ipaddress.ip_address(a).version == 4]
        self.done.callback(ipv4 or self.addresses)


class HubSet(Service):
    """
    Join and leave hubs as the ``--hub`` endpoints and their names say.

    :ivar joined: the hubs joined now, by endpoint description (at its
        resolved address for a name).
    """

    def __init__(self, descriptions: list[str], join: Callable[[str], Offers],
                 resolver: IHostnameResolver, clock: IReactorTime,
                 interval: float = DEFAULT_RESOLVE_INTERVAL,
                 changed: Callable[[int], None] = lambda count: None) -> None:
        """
        :param join: offer the slots to the hub at an endpoint description.
        :param changed: told how many hubs are joined, whenever it changes.
        """
        self._descriptions = descriptions
        self._join = join
        self._resolver = resolver
        self._changed = changed
        self._names = {d: named for d in descriptions if (named := named_host(d))}
        self._resolving = LoopingCall(self._resolve_all)
        self._resolving.clock = clock
        self._interval = interval
        self.joined: dict[str, Offers] = {}

    def startService(self) -> None:
        super().startService()
        self._update({d for d in self._descriptions if d not in self._names})
        if self._names:
            self._resolving.start(self._interval)

    def stopService(self) -> None:
        super().stopService()
        if self._resolving.running:
            self._resolving.stop()

    def _resolve_all(self) -> Deferred[None]:
        resolving = Deferred.fromCoroutine(self._resolve_each())
        # A failure here must not stop the resolving for good.
        resolving.addErrback(lambda failure: _log.failure("resolving the hubs failed", failure))
        return resolving

    async def _resolve_each(self) -> None:
        wanted = {d for d in self._descriptions if d not in self._names}
        kept: set[str] = set()
        for description, (name, port) in self._names.items():
            receiver = _Addresses()
            self._resolver.resolveHostName(receiver, name, int(port))
            addresses = await receiver.done
            if not addresses:
                # A name that resolves to nothing for a moment (a DNS
                # hiccup, every hub pod restarting) keeps the hubs it had.
                _log.warn("hub {name} resolved to no address; keeping its hubs", name=name)
                kept.update(j for j in self.joined if j.startswith(f"{description}#"))
                continue
            for address in addresses:
                wanted.add(f"{description}#{address}")
        self._update(wanted, kept)

    def _update(self, wanted: set[str], kept: set[str] = frozenset()) -> None:
        """
        Join the hubs in C{wanted} not joined yet, and leave those in
        neither C{wanted} nor C{kept}.
        """
        if not self.running:
            return
        for key in sorted(wanted - self.joined.keys()):
            _log.info("joining hub {hub}", hub=_endpoint(key))
            self.joined[key] = self._join(_endpoint(key))
        for key in self.joined.keys() - wanted - kept:
            _log.info("leaving hub {hub}: gone from DNS", hub=_endpoint(key))
            self.joined.pop(key).leave()
        self._changed(len(self.joined))


def _endpoint(key: str) -> str:
    """The endpoint description of a hub joined under C{key}."""
    description, _, address = key.partition("#")
    return at_address(description, address) if address else description
