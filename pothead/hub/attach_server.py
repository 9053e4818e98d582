"""
The hub's worker port: accept a worker's attach request, check it, and
turn the connection into a slot of the pool it names.
"""

from __future__ import annotations

from typing import Mapping
from urllib.parse import unquote

from httptools import HttpRequestParser
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from pothead.address import host_port
from pothead.attach import (
    ATTACH_PATH,
    BIDS_HEADER,
    DEFAULT_POOL,
    HTTP11_ALPN,
    OFFERS_HEADER,
    UPGRADE_TOKENS,
    HeadReceiver,
    header_tokens,
)
from pothead.http.message import reason_phrase
from pothead.hub.bidding_slot import BiddingSlot
from pothead.hub.connection_limit import ConnectionLimit
from pothead.hub.limits import Limits
from pothead.hub.metrics import HubMetrics
from pothead.hub.pool import Pool
from pothead.hub.pool_group import PoolGroup
from pothead.hub.slot import LegacySlot, Slot
from pothead.tokens import TokenCheck

_log = Logger()

class AttachRefused(Exception):
    """
    An attach request the hub will not accept.

    :ivar code: the HTTP status to answer with.
    :ivar why: what was wrong, for the worker and the log.
    :ivar headers: extra response headers.
    """

    def __init__(self, code: int, why: str, headers: tuple[bytes, ...] = ()) -> None:
        super().__init__(code, why)
        self.code = code
        self.why = why
        self.headers = headers


def check_attach(
    start_line: bytes,
    headers: Headers,
    pools: Mapping[str, Pool],
    token_check: TokenCheck,
    limits: Limits,
) -> tuple[Pool | PoolGroup, bytes]:
    """
    Decide on one attach request.

    Its path names the pool to join, or several separated by commas
    (C{/pothead/v1/attach/thumbs,transcode}): the slot then takes the
    oldest job across them (L{PoolGroup}).

    :param start_line: its request line.
    :param headers: its headers.
    :param pools: the hub's pools, by name.
    :param token_check: the hub's token policy.
    :param limits: the hub's limits: the slots it may hold, and the
        Retry-After it suggests when it holds them all.
    :return: the pool (or pools) to join and the upgrade token to answer with.
    :raise AttachRefused: when the request is not an acceptable attach.
    """
    parts = start_line.split(b" ")
    if len(parts) != 3 or parts[2] != b"HTTP/1.1":
        raise AttachRefused(400, "not an HTTP/1.1 request line")
    method, target, _ = parts
    if method not in (b"GET", b"POST"):
        raise AttachRefused(400, "attach with GET, or POST with an empty body")
    for length in headers.getRawHeaders(b"content-length", ()):
        if length.strip() != b"0":
            raise AttachRefused(400, "an attach request has no body")
    if headers.hasHeader(b"transfer-encoding"):
        raise AttachRefused(400, "an attach request has no body")
    if not target.startswith(ATTACH_PATH):
        raise AttachRefused(400, "not an attach request: path must start with /pothead/v1/attach/")
    if not token_check.accepts(headers.getRawHeaders(b"authorization", [b""])[0]):
        raise AttachRefused(
            401, "missing or wrong bearer token", (b"WWW-Authenticate: Bearer",)
        )
    names = [
        unquote(part.decode("ascii", "replace")) or DEFAULT_POOL
        for part in target[len(ATTACH_PATH):].split(b",")
    ]
    for name in names:
        if name not in pools:
            raise AttachRefused(
                404, f"no pool named {name!r} (pools: {', '.join(sorted(pools))})")
    joined = [pools[name] for name in dict.fromkeys(names)]
    pool = joined[0] if len(joined) == 1 else PoolGroup(joined)
    upgrade = _chosen_upgrade(headers)
    if b"upgrade" not in (t.lower() for t in header_tokens(headers, b"connection")):
        raise AttachRefused(400, "Connection: Upgrade is required")
    if _slots_held(pools, limits.max_slots) >= limits.max_slots:
        raise AttachRefused(
            503, f"the hub holds {limits.max_slots} slots, its --max-slots",
            (b"Retry-After: %d" % (limits.retry_after,),),
        )
    return pool, upgrade


def _slots_held(pools: Mapping[str, Pool], limit: int) -> int:
    """
    The slots attached to the hub, each once though it serves several
    pools: counted exactly only near C{limit} (adding up each pool's is
    cheaper, and counts a slot of several pools more than once).
    """
    counted = sum(len(pool.slots) for pool in pools.values())
    if counted < limit or len(pools) == 1:
        return counted
    return len(set().union(*(pool.slots for pool in pools.values())))


def _chosen_upgrade(headers: Headers) -> bytes:
    """
    The first upgrade token offered that the hub speaks, checking that
    the transposed protocol, if named, is HTTP/1.1.
    """
    offered = header_tokens(headers, b"upgrade")
    chosen = next(
        (t for t in offered if t.lower() in (u.lower() for u in UPGRADE_TOKENS)), None
    )
    upgrade_required = (b"Upgrade: " + UPGRADE_TOKENS[0],)
    if chosen is None:
        raise AttachRefused(426, "upgrade to ptth is required", upgrade_required)
    alpn = header_tokens(headers, b"alpn")
    if alpn and HTTP11_ALPN.lower() not in (a.lower() for a in alpn):
        raise AttachRefused(426, "the hub speaks only http/1.1 after the upgrade", upgrade_required)
    return chosen


#: C{pothead_attach_failures_total}'s reason for each refusal's status.
_REFUSAL_REASONS = {
    400: "bad_request", 401: "unauthorized", 404: "unknown_pool", 426: "upgrade_required",
    503: "slots_full",
}

#: Its reason for a connection dropped without an answer.
_DROP_REASONS = {
    "timed out": "timeout", "silent too long": "quiet", "head too large": "head_too_large",
}


class AttachServer(HeadReceiver):
    """
    One connection on the worker port, until it attaches or is refused.
    """

    parser_class = HttpRequestParser

    def __init__(self, port: WorkerPortFactory) -> None:
        """
        :param port: the worker port it came in on, with the hub's pools,
            token, limits, clock and worker connection limit.
        """
        super().__init__()
        self._pools = port.pools
        self._token_check = port.token_check
        self._limits = port.limits
        self.timeout = port.limits.attach_timeout
        self.quiet_timeout = port.limits.quiet_timeout
        self.callLater = port.clock.callLater
        self._connections = port.connections
        self._failures = port.metrics.attach_failures

    def connectionMade(self) -> None:
        super().connectionMade()
        self._connections.opened(self)

    def connectionLost(self, reason: Failure = None) -> None:
        super().connectionLost(reason)
        self._connections.closed(self)

    def idle_since(self) -> None:
        """A worker connection is never closed to make room for another."""
        return None

    def close_idle(self) -> None:
        raise NotImplementedError("worker connections are not closed to make room")

    def head_received(self, start_line: bytes, headers: Headers) -> None:
        peer = self.transport.getPeer()
        worker = headers.getRawHeaders(b"pothead-worker", [b""])[0].decode("utf-8", "replace")
        name = f"{worker or 'unnamed'}@{host_port(peer)}"
        try:
            pool, upgrade = check_attach(
                start_line, headers, self._pools, self._token_check, self._limits
            )
        except AttachRefused as refusal:
            _log.warn(
                "refused attach from {worker}: {code} {why}",
                worker=name,
                code=refusal.code,
                why=refusal.why,
            )
            self._refuse(refusal)
            return
        offers = header_tokens(headers, OFFERS_HEADER.lower())
        late = offers not in ([], [b"1"])
        bids = late and header_tokens(headers, BIDS_HEADER.lower()) == [b"1"]
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
            b"Upgrade: " + upgrade + b"\r\nALPN: " + HTTP11_ALPN + b"\r\n"
            + (BIDS_HEADER + b": 1\r\n" if bids else b"") + b"\r\n"
        )
        # A slot offered to several hubs may come and go with every job
        # another hub gives it: its attaches are not news.
        (_log.debug if late else _log.info)(
            "worker {worker} attached to pool {pool}", worker=name, pool=pool.name
        )
        slot = BiddingSlot(pool, name) if bids else Slot(pool, name, offered_elsewhere=late)
        if late and offers[0].isdigit():
            slot.offered_to = int(offers[0])
        self.switch_to(slot)

    def head_malformed(self, why: str) -> None:
        self.setTimeout(None)
        refusal = AttachRefused(400, f"malformed attach request: {why}")
        _log.warn(
            "refused attach from {peer}: {code} {why}",
            peer=host_port(self.transport.getPeer()), code=400, why=refusal.why,
        )
        self._refuse(refusal)

    def head_failed(self, why: str) -> None:
        _log.warn(
            "dropped worker-port connection from {peer}: {why}",
            peer=host_port(self.transport.getPeer()),
            why=why,
        )
        self._failures[_DROP_REASONS.get(why, "other")] += 1
        super().head_failed(why)

    def _refuse(self, refusal: AttachRefused) -> None:
        self._failures[_REFUSAL_REASONS[refusal.code]] += 1
        body = refusal.why.encode("utf-8") + b"\n"
        head = [
            b"HTTP/1.1 %d %s" % (refusal.code, reason_phrase(refusal.code)),
            b"Content-Type: text/plain; charset=utf-8",
            b"Content-Length: %d" % (len(body),),
            b"Connection: close",
            *refusal.headers,
        ]
        self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        self.transport.loseConnection()


class WorkerPortFactory(Factory):
    """
    Build an L{AttachServer} for each connection on the worker port.
    """

    def __init__(
        self,
        pools: Mapping[str, Pool],
        token_check: TokenCheck,
        limits: Limits,
        clock: IReactorTime,
        connections: ConnectionLimit,
        metrics: HubMetrics,
    ) -> None:
        """
        :param metrics: where attaches that fail are counted.
        """
        self.pools = pools
        self.metrics = metrics
        self.token_check = token_check
        self.limits = limits
        self.clock = clock
        self.connections = connections

    def buildProtocol(self, addr) -> AttachServer:
        return AttachServer(self)


class LegacyWorkerFactory(Factory):
    """
    A listener for workers that do not attach: every connection is a slot
    of the default pool at once, with no handshake and so no token.
    """

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    def buildProtocol(self, addr) -> LegacySlot:
        name = f"legacy@{host_port(addr)}"
        _log.info("legacy worker {worker} connected to pool {pool}", worker=name, pool=self._pool.name)
        return LegacySlot(self._pool, name)
