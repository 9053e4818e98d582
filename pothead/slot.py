"""
A slot, seen from the hub: one attached worker connection, on which the hub
is the HTTP/1.1 client.

Each slot runs one loop: take the next job from its pool, send it, relay
the response, and take the next job as soon as the connection is free
again.  A job the worker never started is handed back to the head of the
queue; a job that failed half-way is answered or cut off, never retried.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IResponse

from pothead.attach import DETACH_NOTICE, REQUEUE_HEADER
from pothead.client import (
    HTTP11ClientProtocol,
    RequestTransmissionFailed,
    ResponseNeverReceived,
    wants_close,
    watch_response,
)
from pothead.job import Discard, Job
from pothead.pool import Pool

#: How many requeue signals one job may collect before the hub answers 503
#: itself: a bound against a pool in which every worker keeps refusing.
MAX_REQUEUE_SIGNALS = 20

_log = Logger()


def is_requeue_signal(response: IResponse) -> bool:
    """
    Whether a worker answered "not processed": status 503 with
    C{Pothead-Requeue: 1}.
    """
    values = response.headers.getRawHeaders(REQUEUE_HEADER, [b""])
    return response.code == 503 and values[0].strip() == b"1"


class Slot(Protocol):
    """
    One attached worker connection, taking jobs from one pool.

    :ivar worker: what the worker called itself when it attached.
    :ivar job: the job being served, or L{None} while idle.
    """

    #: Whether the connection serves one request only, as a legacy worker's
    #: (POTHEAD 0.4.3) does, whatever its response says.
    single_use = False

    def __init__(self, pool: Pool, worker: str) -> None:
        self.pool = pool
        self.worker = worker
        self.job: Job | None = None
        self._client = HTTP11ClientProtocol(self._quiescent)
        self._waiting: Deferred[Job] | None = None
        self._reusable = False
        self._leftover = b""
        self._closing = False

    def __repr__(self) -> str:
        return f"<Slot {self.worker} pool={self.pool.name}>"

    def connectionMade(self) -> None:
        self._client.makeConnection(self.transport)
        self.pool.slots.add(self)
        self._take_next()

    def dataReceived(self, data: bytes) -> None:
        if self.job is None:
            self._unsolicited(data)
            return
        self._client.dataReceived(data)

    def _unsolicited(self, data: bytes) -> None:
        """
        Bytes from the worker when no request is pending: a draining
        worker's detach notice, or garbage.  The slot ends either way.
        """
        self._reusable = False
        if data.startswith(DETACH_NOTICE[:12]) and REQUEUE_HEADER.lower() in data.lower():
            _log.info("worker {worker} detached", worker=self.worker)
            self._close()
            return
        _log.warn(
            "worker {worker} sent {n} bytes while no request was pending; dropping it",
            worker=self.worker,
            n=len(data),
        )
        self._close(abort=True)

    def _leftover_received(self, data: bytes) -> None:
        # Read together with the end of a response; judged once that
        # response is done, as if it had arrived on its own.
        self._leftover += data

    def connectionLost(self, reason: Failure = None) -> None:
        self.connected = False
        self.pool.slots.discard(self)
        if not self._closing:
            _log.info("worker {worker} {state} disconnected: {why}", worker=self.worker,
                      state="busy" if self.job else "idle", why=reason.getErrorMessage())
        if self._waiting is not None:
            waiting, self._waiting = self._waiting, None
            waiting.cancel()
        self._client.connectionLost(reason)

    def abort(self) -> None:
        """
        Drop this worker connection at once; the worker reattaches with a
        fresh one.  Used when the consumer went away mid-job, so that the
        rest of that response can never reach the next job's consumer.
        """
        self._close(abort=True)

    def _close(self, abort: bool = False) -> None:
        """
        End this slot from the hub's side (so its end is not news to log).
        """
        self._closing = True
        if abort:
            self.transport.abortConnection()
        else:
            self.transport.loseConnection()

    def _take_next(self) -> None:
        self._reusable = False
        self._waiting = self.pool.get()
        self._waiting.addCallbacks(self._serve, _ignore_cancel)

    def _serve(self, job: Job) -> None:
        self._waiting = None
        if job.gone or job.request.finished:
            self._take_next()
            return
        self.job = job
        job.taken(self)
        requested = self._client.request(job.outbound())
        watch_response(self._client, self._leftover_received)
        requested.addCallbacks(
            self._response, self._failed, callbackArgs=(job,), errbackArgs=(job,)
        )

    def _quiescent(self, client: HTTP11ClientProtocol) -> None:
        # Twisted calls this before the body protocol learns the response
        # is done; the next request is sent from _finished, after that.
        if self.single_use or wants_close(client):
            self._close()
        else:
            self._reusable = True

    def _response(self, response: IResponse, job: Job) -> None:
        if is_requeue_signal(response):
            response.deliverBody(Discard(lambda reason: self._handed_back(job)))
            return
        job.relay(response, lambda reason: self._finished(job))

    def _handed_back(self, job: Job) -> None:
        # A worker that hands a job back is not ready for another: close
        # this slot, and let the worker reattach when it is.
        self._reusable = False
        self._close()
        job.handed_back += 1
        if job.gone or job.request.finished:
            pass
        elif job.handed_back > MAX_REQUEUE_SIGNALS:
            job.unavailable(f"handed back by workers {job.handed_back} times")
        else:
            _log.info("worker {worker} handed back {request}", worker=self.worker, request=job.what)
            job.requeue()
        self._finished(job)

    def _failed(self, reason: Failure, job: Job) -> None:
        never_started = reason.check(ResponseNeverReceived, RequestTransmissionFailed)
        if job.gone or job.request.finished:
            pass
        elif never_started and job.idempotent and job.lost_workers < job.limits.retries:
            job.lost_workers += 1
            _log.info(
                "worker {worker} lost before answering {request} from {peer}; requeued",
                worker=self.worker,
                request=job.what,
                peer=job.peer,
            )
            job.requeue()
        else:
            _log.warn(
                "worker {worker} failed {request} from {peer}: {why}; answering 502",
                worker=self.worker,
                request=job.what,
                peer=job.peer,
                why=_describe(reason),
            )
            job.answer(502, "The worker failed to answer this request.")
        self._finished(job)

    def _finished(self, job: Job | None) -> None:
        if self.job is job:
            self.job = None
        if self._leftover:
            leftover, self._leftover = self._leftover, b""
            self._unsolicited(leftover)
        elif self._reusable and self.connected:
            self._take_next()


def _ignore_cancel(reason: Failure) -> None:
    reason.trap(CancelledError)


def _describe(reason: Failure) -> str:
    """
    The innermost reasons of a wrapped Twisted client failure, readable.
    """
    inner = getattr(reason.value, "reasons", None)
    if inner:
        return "; ".join(_describe(r) for r in inner)
    return f"{reason.type.__name__}: {reason.getErrorMessage()}"


class LegacySlot(Slot):
    """
    A slot from a worker that does not attach (a POTHEAD 0.4.3 worker, or
    any HTTP server that connects out and waits): it serves one request,
    then closes and connects again.
    """

    single_use = True
