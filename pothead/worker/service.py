"""
The worker: a WSGI app served over slots it attaches to one hub or more.

Each slot has a L{ClientService} per hub it is offered to: it connects,
attaches, serves HTTP on the connection until either side closes it, then
connects again, with backoff while the hub is unreachable.  All slots share one server and one thread pool
with a thread per slot, so the app never runs more requests at once than
the worker has slots.
"""

from __future__ import annotations

import os
import socket
from typing import Callable, Sequence

from twisted.application.internet import ClientService
from twisted.application.service import MultiService, Service
from twisted.internet import error
from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IHostnameResolver, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Site
from zope.interface import implementer

from pothead.exit import exit_cleanly
from pothead.logs import LogFormatChoice
from pothead.worker.admission import FixedAdmission, IAdmission
from pothead.worker.attach_client import HubLines, WorkerSlot
from pothead.worker.environ import WSGIApp, behind_hub
from pothead.worker.flow import FlowControlledWSGIResource, flow_controlled
from pothead.worker.hubs import DEFAULT_RESOLVE_INTERVAL, HubSet
from pothead.worker.metrics import WorkerMetrics, worker_admin_site
from pothead.worker.slot_server import SlotServer
from pothead.worker.threads import AppThreads
from pothead.worker.upstream import DEFAULT_UPSTREAM_WAIT, UpstreamService, sidecar

#: Seconds the hub has to answer an attach request.
DEFAULT_ATTACH_TIMEOUT = 10.0

#: Seconds in-flight requests get to finish when the worker stops.
DEFAULT_DRAIN_TIMEOUT = 60.0

_log = Logger()


class AppThreadsService(Service):
    """
    Run the app's threads exactly while the service runs, so that service
    ordering, not reactor events, decides when the app can be called.
    """

    def __init__(self, pool: AppThreads, reactor) -> None:
        self.pool = pool
        self._reactor = reactor

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        # Joining the threads blocks until every app call returns, and an
        # app call still writing its response needs the reactor to do so:
        # join from another thread, never from the reactor's.
        return deferToThreadPool(self._reactor, self._reactor.getThreadPool(), self.pool.stop)


class WorkerService(LogFormatChoice, MultiService):
    """
    A worker's slots and thread pool, which drains before it stops.

    Stopping (SIGTERM under twistd) first detaches every idle slot, lets
    busy slots finish their response and then detach, refuses to reattach,
    and only then stops the slots' services and the thread pool.  A request
    the hub sends to a slot while it detaches is handed back, unprocessed.
    """

    def __init__(self, reactor, drain_timeout: float, admission: IAdmission,
                 max_jobs: int | None = None, stop: Callable[[], None] | None = None,
                 metrics: WorkerMetrics | None = None, pool: str = "default") -> None:
        """
        :param max_jobs: after taking this many jobs, call C{stop}.
        :param stop: stops the process, whose shutdown stops this service
            (under twistd: C{reactor.stop}, the path SIGTERM takes).
        :param metrics: what the worker counts of its work.
        :param pool: the pool its slots join.
        """
        super().__init__()
        self.admission = admission
        self.slots: list[WorkerSlot] = []
        self.metrics = metrics or WorkerMetrics()
        self.pool = pool
        #: Jobs the app has been called for.
        self.jobs = 0
        self._reactor = reactor
        self._drain_timeout = drain_timeout
        self._max_jobs = max_jobs
        self._stop_process = stop or reactor.stop

    def job_started(self) -> None:
        """
        The app was called for one more job (called in the reactor thread).
        """
        self.jobs += 1
        if self.jobs == self._max_jobs and self.running:
            # The stop drains: the job that got here, and any other in
            # flight, finishes; idle slots detach and take no more.
            _log.info("took {n} jobs (--max-jobs); draining to be replaced", n=self.jobs)
            self._stop_process()

    async def _drain(self) -> None:
        drained = gatherResults([slot.drain() for slot in self.slots])
        drained.addTimeout(self._drain_timeout, self._reactor)
        try:
            await drained
            exit_cleanly(self._reactor)
        except Exception:
            left = [client for slot in self.slots for client in slot.clients]
            _log.warn(
                "drain timed out after {timeout}s; cutting {busy} slots",
                timeout=self._drain_timeout,
                busy=len(left),
            )
            # The hub answers their consumers now (502, or another worker
            # for a request never answered) rather than at its timeout.
            for client in left:
                client.transport.abortConnection()

    async def _stop(self) -> None:
        self.admission.stop()
        try:
            await self._drain()
        except Exception:
            # Whatever went wrong, the slots and the thread pool must still
            # stop, or the process would hang on its way out.
            _log.failure("drain failed; stopping anyway")
        await MultiService.stopService(self)

    def stopService(self) -> Deferred[None]:
        _log.info("draining {n} slots", n=len(self.slots))
        return Deferred.fromCoroutine(self._stop())

    def admin_site(self) -> Site:
        """
        The worker's admin site (C{--admin}): C{/metrics} of its slots and
        counts, C{/healthz}.
        """
        return worker_admin_site(self.metrics, lambda: self.slots, self.pool)


def counted(app: WSGIApp, reactor, job_started: Callable[[], None]) -> WSGIApp:
    """
    C{app}, telling C{job_started} in the reactor thread each time it is
    called (the call itself runs in an app thread).
    """

    def counting_app(environ, start_response):
        reactor.callFromThread(job_started)
        return app(environ, start_response)

    return counting_app


def slot_server(reactor, pool: AppThreads, app: WSGIApp,
                metrics: WorkerMetrics | None = None) -> SlotServer:
    """
    The server every slot runs after attaching: the app, behind the hub,
    hosted by twisted.web.wsgi in C{pool}, its response read only as fast
    as the hub takes it.

    Request bodies reach the app as sent (never parsed as forms first),
    and slots never time out for idleness: an idle slot is a worker
    waiting for work, which is its normal state.

    :param metrics: counts each job.
    """
    metrics = metrics or WorkerMetrics()
    resource = FlowControlledWSGIResource(reactor, pool, flow_controlled(behind_hub(app)),
                                          metrics)
    return SlotServer(resource, reactor, metrics)


def slot_name(index: int) -> str:
    """
    How slot C{index} of this process introduces itself to the hub.
    """
    return f"{socket.gethostname()}/{os.getpid()}/{index}"


def worker_service(
    reactor,
    app: WSGIApp | None,
    hubs: Sequence[str],
    slots: int,
    token: str | None = None,
    pool: str | Sequence[str] = "default",
    attach_timeout: float = DEFAULT_ATTACH_TIMEOUT,
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    admission: IAdmission | None = None,
    spread: str = "late",
    resolve_interval: float = DEFAULT_RESOLVE_INTERVAL,
    resolver: IHostnameResolver | None = None,
    max_jobs: int | None = None,
    stop: Callable[[], None] | None = None,
    upstream: str | None = None,
    upstream_wait: float = DEFAULT_UPSTREAM_WAIT,
    upstream_health: str | None = None,
) -> WorkerService:
    """
    A worker with C{slots} slots attached to the hubs at C{hubs}, serving
    C{app} or relaying to C{upstream}.

    :param reactor: the reactor to connect, schedule and call back with.
    :param app: the WSGI application to serve.
    :param hubs: client endpoint strings of the hubs' worker ports, e.g.
        C{tcp:127.0.0.1:4040}.
    :param spread: with several hubs, C{"late"} offers every slot to every
        hub through a connection each, and the first hub to send a job
        has it (late binding: the other offers are withdrawn until the job
        is done); C{"even"} gives slot I{i} to hub I{i mod n} alone.
    :param resolve_interval: with C{"late"}, seconds between two
        resolutions of a hub's name; each address is a hub
        (L{pothead.worker.hubs}).
    :param resolver: resolves hub names; the reactor's by default.
    :param slots: how many requests this worker serves at once.
    :param token: the hub's bearer token, if it requires one.
    :param pool: the pool to join, or several: each slot then takes the
        oldest job across them (the hub's L{pothead.hub.pool_group}).
    :param attach_timeout: seconds the hub has to answer an attach.
    :param drain_timeout: seconds in-flight requests get when stopping.
    :param admission: decides when each slot may attach (default: at once).
    :param max_jobs: how many jobs to take before stopping, to be
        replaced (default: no limit).
    :param stop: how to stop once C{max_jobs} are taken (default:
        C{reactor.stop}, whose shutdown drains this service).
    :param upstream: instead of C{app}, the local HTTP server each job is
        relayed to (a sidecar worker, L{pothead.worker.upstream}):
        C{http://HOST:PORT} or C{unix:PATH}.
    :param upstream_wait: seconds it may refuse connections before jobs
        are answered 502.
    :param upstream_health: a path on it that answers 2xx while it is
        ready; slots attach only then.
    """
    metrics = WorkerMetrics()
    pools = [pool] if isinstance(pool, str) else list(pool)
    # The metrics' pool label: one name, or the pools as the hub names
    # such a slot's group.
    pool = "+".join(pools)
    if upstream is not None:
        server, admission = sidecar(reactor, upstream, slots, upstream_wait, upstream_health,
                                    metrics)
        service = WorkerService(reactor, drain_timeout, admission, metrics=metrics, pool=pool)
        UpstreamService(server).setServiceParent(service)
        # Each connection detaches once its job is done, and attaches
        # again when the admission allows.
        admission.detach_all = lambda: [
            client.drain() for slot in service.slots for client in list(slot.clients)
        ]
    else:
        admission = admission or FixedAdmission()
        service = WorkerService(reactor, drain_timeout, admission, max_jobs=max_jobs, stop=stop,
                                metrics=metrics, pool=pool)
        threads = AppThreads(slots, name="pothead-wsgi")
        AppThreadsService(threads, reactor).setServiceParent(service)
        if max_jobs is not None:
            app = counted(app, reactor, service.job_started)
        server = slot_server(reactor, threads, app, metrics)
    lines = HubLines()
    service.slots = [
        WorkerSlot(server, pools, token, slot_name(index), attach_timeout, reactor, admission,
                   lines=lines, metrics=metrics)
        for index in range(slots)
    ]
    if spread == "even":
        for index, slot in enumerate(service.slots):
            hub = clientFromString(reactor, hubs[index % len(hubs)])
            HubOffers(hub, [slot], reactor, metrics).setServiceParent(service)
        return service

    # The hubs' offers have a parent of their own, started before the hub
    # set joins any: a child added to a MultiService in the middle of its
    # startService would be started twice.
    joined = MultiService()
    joined.setServiceParent(service)

    def join(description: str) -> HubOffers:
        offers = HubOffers(clientFromString(reactor, description), service.slots, reactor,
                           metrics)
        offers.setServiceParent(joined)
        return offers

    def offered_to(count: int) -> None:
        for slot in service.slots:
            slot.offered_to = count

    HubSet(
        list(hubs), join, resolver or reactor.nameResolver, reactor, resolve_interval,
        changed=offered_to,
    ).setServiceParent(service)
    return service


class _Offer(Factory):
    """
    One slot's offer at one hub: the factory of that hub's L{ClientService}
    for the slot, which builds the slot's connections there.
    """

    #: A slot offered to several hubs connects again after every job
    #: another hub gives it: "Starting factory" lines for each would be
    #: noise.
    noisy = False

    def __init__(self, slot: WorkerSlot) -> None:
        self.slot = slot
        self.client = None
        self.leaving = False

    def buildProtocol(self, addr):
        if self.leaving:
            return None
        self.client = self.slot.buildProtocol(addr)
        return self.client


class HubOffers(MultiService):
    """
    The slots offered at one hub: a L{ClientService} each, which connects,
    attaches, and connects again whenever the connection ends.
    """

    def __init__(self, hub: IStreamClientEndpoint, slots: list[WorkerSlot], reactor,
                 metrics: WorkerMetrics | None = None) -> None:
        """
        :param metrics: counts the failures to connect to the hub.
        """
        super().__init__()
        self._clock = reactor
        self._offers = [_Offer(slot) for slot in slots]
        if metrics is not None:
            hub = _Counted(hub, metrics)
        for offer in self._offers:
            ClientService(
                hub,
                offer,
                retryPolicy=offer.slot.retry_delay,
                clock=reactor,
                prepareConnection=lambda client: client.prepare(),
            ).setServiceParent(self)

    def leave(self) -> Deferred[None]:
        """
        Take the offers back: each connection detaches once its job, if
        any, is done, and none is made again.
        """
        return Deferred.fromCoroutine(self._leave())

    async def _leave(self) -> None:
        for offer in self._offers:
            offer.leaving = True
        await gatherResults([
            offer.client.drain() for offer in self._offers
            if offer.client is not None and offer.client.connected_now
        ])
        # The last drain ends as its connection is lost, inside that
        # ClientService's own transition, which may not be re-entered:
        # stop them from the next turn of the reactor.
        await deferLater(self._clock, 0, lambda: None)
        await self.stopService()
        self.disownServiceParent()



def connect_failure(failure: Failure) -> str | None:
    """
    The reason a connect to a hub failed, as
    C{pothead_worker_attach_failures_total} names it; L{None} for a
    connect cancelled by the worker itself (stopping).
    """
    if failure.check(CancelledError, error.ConnectingCancelledError):
        return None
    if failure.check(error.ConnectionRefusedError):
        return "connect_refused"
    if failure.check(error.TimeoutError):
        return "connect_timeout"
    if failure.check(error.DNSLookupError):
        return "dns"
    return "connect_failed"


@implementer(IStreamClientEndpoint)
class _Counted:
    """
    A hub's endpoint, each failure of whose connects is counted as an
    attach failure (the attach never began).
    """

    def __init__(self, endpoint: IStreamClientEndpoint, metrics: WorkerMetrics) -> None:
        self._endpoint = endpoint
        self._metrics = metrics

    def connect(self, factory: Factory) -> Deferred:
        return self._endpoint.connect(factory).addErrback(self._failed)

    def _failed(self, failure: Failure) -> Failure:
        reason = connect_failure(failure)
        if reason is not None:
            self._metrics.attach_failed(reason)
        return failure
