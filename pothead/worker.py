"""
The worker: a WSGI app served over slots it attaches to a hub.

Each slot is a L{ClientService}: it connects, attaches, serves HTTP on the
connection until either side closes it, then connects again, with backoff
while the hub is unreachable.  All slots share one Site and one thread pool
with a thread per slot, so the app never runs more requests at once than
the worker has slots.
"""

from __future__ import annotations

import os
import random
import socket

from twisted.application.internet import ClientService
from twisted.application.service import MultiService, Service
from twisted.internet.endpoints import clientFromString
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.server import Site
from twisted.web.wsgi import WSGIResource

from pothead.environ import WSGIApp, behind_hub
from pothead.worker_attach import AttachFactory

#: Seconds the hub has to answer an attach request.
DEFAULT_ATTACH_TIMEOUT = 10.0

#: The longest wait between two attempts to reach a hub, in seconds.
MAX_RETRY_DELAY = 5.0

_log = Logger()


def retry_delay(attempt: int) -> float:
    """
    Seconds before reconnect attempt C{attempt} (1 for the first after a
    connection ended).

    The first reconnect is immediate: a slot the hub closed after a
    response, or that the app asked to close, is back in line at once.
    Later ones back off exponentially, with jitter so that a restarted hub
    is not hit by every slot in the same instant.
    """
    if attempt <= 1:
        return 0.0
    return min(0.1 * 2 ** (attempt - 2), MAX_RETRY_DELAY) * (0.5 + random.random())


class ThreadPoolService(Service):
    """
    Run a thread pool exactly while the service runs, so that service
    ordering, not reactor events, decides when the app can be called.
    """

    def __init__(self, pool: ThreadPool) -> None:
        self.pool = pool

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> None:
        super().stopService()
        self.pool.stop()


def worker_site(reactor, pool: ThreadPool, app: WSGIApp) -> Site:
    """
    The Site every slot serves after attaching: the app, behind the hub.

    Slots never time out for idleness: an idle slot is a worker waiting
    for work, which is its normal state.
    """
    return Site(WSGIResource(reactor, pool, behind_hub(app)), timeout=None)


def slot_name(index: int) -> str:
    """
    How slot C{index} of this process introduces itself to the hub.
    """
    return f"{socket.gethostname()}/{os.getpid()}/{index}"


def _log_refusal(reason: Failure) -> Failure:
    _log.warn("{why}", why=reason.getErrorMessage())
    return reason


def worker_service(
    reactor,
    app: WSGIApp,
    hub: str,
    slots: int,
    token: str | None = None,
    pool: str = "default",
    attach_timeout: float = DEFAULT_ATTACH_TIMEOUT,
) -> MultiService:
    """
    A worker with C{slots} slots attached to the hub at C{hub}.

    :param reactor: the reactor to connect, schedule and call back with.
    :param app: the WSGI application to serve.
    :param hub: a client endpoint string, e.g. C{tcp:127.0.0.1:4040}.
    :param slots: how many requests this worker serves at once.
    :param token: the hub's bearer token, if it requires one.
    :param pool: the pool to join.
    :param attach_timeout: seconds the hub has to answer an attach.
    """
    service = MultiService()
    threads = ThreadPool(minthreads=slots, maxthreads=slots, name="pothead-wsgi")
    ThreadPoolService(threads).setServiceParent(service)
    site = worker_site(reactor, threads, app)
    endpoint = clientFromString(reactor, hub)
    for index in range(slots):
        factory = AttachFactory(
            site, pool, token, slot_name(index), attach_timeout, reactor
        )
        ClientService(
            endpoint,
            factory,
            retryPolicy=retry_delay,
            clock=reactor,
            prepareConnection=lambda client: client.attach().addErrback(_log_refusal),
        ).setServiceParent(service)
    return service
