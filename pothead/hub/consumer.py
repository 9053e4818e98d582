"""
The consumer side of the hub: its own HTTP/1.1 server (L{pothead.http.server})
turning every request into a job and queueing it.
"""

from __future__ import annotations

from typing import Mapping

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory

from pothead.address import host_port
from pothead.http.request import RequestHead
from pothead.http.server import ServerChannel, ServerRequest
from pothead.hub.access_log import AccessLog
from pothead.hub.connection_limit import ConnectionLimit
from pothead.hub.job import Job
from pothead.hub.limits import Limits
from pothead.hub.metrics import HubMetrics
from pothead.hub.pool import Pool
from pothead.hub.routing import Router
from pothead.hub.tally import Tally


class ConsumerRequest(ServerRequest):
    """
    One consumer request, and the writer of its response.

    :ivar job: the job made of it, once queued.
    """

    __slots__ = ("job",)

    def __init__(self, channel: ServerChannel, head: RequestHead) -> None:
        super().__init__(channel, head)
        self.job: Job | None = None


class ConsumerChannel(ServerChannel):
    """
    One consumer connection, counted against the hub's connection limit,
    which may close it to make room once it idles between requests.
    """

    #: When it last answered a request and went idle (set then only).
    _idle_at: float | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self.factory.connections.opened(self)

    def connectionLost(self, reason) -> None:
        super().connectionLost(reason)
        self.factory.connections.closed(self)

    def idle(self) -> None:
        self._idle_at = self.factory.clock.seconds()

    def idle_since(self) -> float | None:
        """
        When it went idle, if it is idle and kept alive now: closing it
        then loses nothing.
        """
        return self._idle_at if self.between_requests else None

    def close_idle(self) -> None:
        """
        Close it to make room for a connection waiting to be accepted.
        """
        self.close()

    def refused(self, code: int) -> None:
        self.factory.metrics.rejected[code] += 1


class ConsumerFactory(Factory):
    """
    Consumer connections, sharing the pools, limits and an access log.

    :ivar router: which pool each request goes to.
    :ivar pools: the pools, by name.
    :ivar server_timing: whether responses carry a C{Server-Timing} header.
    :ivar metrics: where requests refused before any pool are counted.
    """

    request_class = ConsumerRequest
    requires_host = True

    def __init__(
        self, router: Router, pools: Mapping[str, Pool], clock: IReactorTime, limits: Limits,
        access_log: AccessLog, connections: ConnectionLimit, metrics: HubMetrics,
        server_timing: bool = True,
    ) -> None:
        self.router = router
        self.pools = pools
        self.unrouted = Tally(
            clock, "no pool serves {count} requests; answered 404 (last: {detail})")
        self.metrics = metrics
        self.server_timing = server_timing
        self.clock = clock
        self.limits = limits
        self.access_log = access_log
        self.connections = connections

    def buildProtocol(self, addr) -> ConsumerChannel:
        return ConsumerChannel(self)

    def handle(self, request: ConsumerRequest) -> None:
        if request.head.target == b"*":
            # A probe of the server itself (RFC 9110 section 9.3.7), not a
            # resource of the app: answered here, as twisted.web answers
            # it, and no worker is woken for it.
            if request.head.method == b"OPTIONS":
                request.answer(200, b"OK", [], b"")
            else:
                request.answer(405, b"Method Not Allowed", [(b"Allow", b"OPTIONS")], b"")
            return
        head = request.head
        route = self.router.route(head.host, head.target)
        if route is None:
            self.unrouted.count(
                f"{head.method.decode('latin-1')} {head.target.decode('latin-1')} for host "
                f"{(head.host or b'').decode('latin-1')} from {host_port(request.client_address())}")
            self.metrics.rejected[404] += 1
            request.answer(404, b"Not Found", [(b"Content-Type", b"text/plain; charset=utf-8")],
                           b"Nothing is served here.\n")
            return
        pool = self.pools[route.name]
        request.job = Job(request, pool, self.clock, pool.limits, self.server_timing,
                          route.worker_target(head.target))
        request.job.queue()

    def answered(self, request: ConsumerRequest) -> None:
        job = request.job
        if job is None:
            self.access_log.record(request)
            return
        job.finished()
        self.access_log.record(
            request, job.queue_seconds, job.worker_seconds, job.worker, job.pool.name)

    def lost(self, request: ConsumerRequest) -> None:
        if request.job is not None:
            request.job.consumer_lost()

    def stopFactory(self) -> None:
        self.access_log.close()


def consumer_factory(
    router: Router, pools: Mapping[str, Pool], clock: IReactorTime, limits: Limits,
    connections: ConnectionLimit, metrics: HubMetrics, access_log: str | None = None,
    server_timing: bool = True,
) -> ConsumerFactory:
    """
    The factory consumers connect to.

    :param router: which pool each request goes to.
    :param pools: the pools, by name: where requests are queued.
    :param clock: the hub's clock, for queue times and timeouts.
    :param limits: what consumers may send, and how long they may wait.
    :param connections: the limit on consumer connections, shared by
        every consumer port.
    :param metrics: where requests refused before any pool are counted.
    :param access_log: where the access log goes (combined log format):
        L{None} for the twistd log, a path for a file of its own (written
        in blocks, so cheaper per request), or C{"none"}.
    :param server_timing: whether responses say, in a C{Server-Timing}
        header, how long the job waited and how long the worker took.
    """
    return ConsumerFactory(
        router, pools, clock, limits, AccessLog.open(access_log, clock), connections, metrics,
        server_timing,
    )

