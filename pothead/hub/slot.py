"""
A slot, seen from the hub: one attached worker connection, on which the hub
is the HTTP/1.1 client.

Each slot runs one loop: take the next job from its pool, send it, relay
the response, and take the next job as soon as the connection is free
again.  What becomes of a job whose worker failed it is the job's to
decide (L{Job.worker_lost_before_answer}, L{Job.handed_back},
L{Job.broke_off}); the slot tells it what happened.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from pothead.attach import DRAINING, OFFER_HEADER, REQUEUE_HEADER
from pothead.bidding import HELD
from pothead.http.client import BadResponse, ResponseHead, ResponseReader
from pothead.http.sockets import send_now, tune_tcp
from pothead.hub.body import BufferedBody
from pothead.hub.job import Job
from pothead.hub.pool import Pool

_log = Logger()

#: The values of L{OFFER_HEADER} on a requeue signal that mean the worker
#: gave the slot to another hub's job: the detach notice of late binding,
#: or the hold notice of bids (L{pothead.bidding}).
WITHDRAWN = ([b"withdrawn"], [HELD])


def requeue_reason(head: ResponseHead) -> str:
    """
    Why a worker's requeue signal gave its job back
    (L{pothead.hub.metrics.REQUEUE_REASONS}): its slot was withdrawn for
    another hub's job, its worker is draining, or it refused the job.
    """
    offer = head.values(OFFER_HEADER.lower())
    if offer in WITHDRAWN:
        return "withdrawn"
    return "drain" if offer == [DRAINING] else "requeue_signal"


def is_requeue_signal(head: ResponseHead) -> bool:
    """
    Whether a worker answered "not processed": status 503 with
    C{Pothead-Requeue: 1}.
    """
    values = head.values(REQUEUE_HEADER.lower())
    return head.code == 503 and bool(values) and values[0].strip() == b"1"


class Slot(Protocol):
    """
    One attached worker connection, taking jobs from one pool.

    :ivar worker: what the worker called itself when it attached.
    :ivar job: the job being served, or L{None} while idle.
    :ivar served: how many jobs its worker has answered.
    """

    #: Whether the connection serves one request only, as a legacy worker's
    #: (POTHEAD 0.4.3) does, whatever its response says.
    single_use = False

    #: Whether the slot is made available again before a job's consumer
    #: is answered even when no job waits (see L{response_done}).
    available_early = False

    #: How many hubs its worker offers it to at once (late binding), as
    #: its attach said: shown on the status page.
    offered_to = 1

    def __init__(self, pool: Pool[Job], worker: str, offered_elsewhere: bool = False) -> None:
        """
        :param offered_elsewhere: whether the worker offers this slot to
            other hubs too, and so withdraws it here whenever one of them
            gives it a job.
        """
        self.pool = pool
        self.worker = worker
        self._offered_elsewhere = offered_elsewhere
        self.job: Job | None = None
        self.served = 0
        self._waiting: Deferred[Job] | None = None
        self._responses = ResponseReader(self)
        self._keep_alive = False
        self._handing_back = False
        self._handed_back_why = "requeue_signal"
        self._head: ResponseHead | None = None
        self._upload: BufferedBody | None = None
        self._closing = False

    def __repr__(self) -> str:
        return f"<Slot {self.worker} pool={self.pool.name}>"

    @property
    def state(self) -> str:
        """
        C{"busy"} serving a job, C{"idle"} in line for one, or
        C{"elsewhere"}: attached but neither, its worker bidding for it or
        holding it for another hub's job (late binding), or between two jobs.
        """
        if self.job is not None:
            return "busy"
        return "idle" if self._waiting is not None else "elsewhere"

    def connectionMade(self) -> None:
        # Tuned again for a legacy worker's connection, which has no attach.
        tune_tcp(self.transport)
        self.pool.slots.add(self)
        self._available()

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            self._responses.feed(data)
        except BadResponse as error:
            self._bad_response(str(error))
            return
        if self._head is not None:
            self._relay_head()

    def unsolicited(self, head: ResponseHead) -> None:
        """
        A response when no request is pending: a draining worker's detach
        notice, or a worker gone wrong.  The slot ends either way.
        """
        if is_requeue_signal(head):
            (_log.debug if self._offered_elsewhere else _log.info)(
                "worker {worker} detached", worker=self.worker
            )
            self._close()
            return
        _log.warn(
            "worker {worker} sent a response ({code}) while no request was pending; dropping it",
            worker=self.worker,
            code=head.code,
        )
        self._close(abort=True)

    def connectionLost(self, reason: Failure = None) -> None:
        self.connected = False
        self.pool.slots.discard(self)
        if not self._closing:
            _log.info("worker {worker} {state} disconnected: {why}", worker=self.worker,
                      state="busy" if self.job else "idle", why=reason.getErrorMessage())
        self._leave_line()
        job = self.job
        if job is None or self._responses.connection_lost():
            return
        self.job = None
        if self._handing_back:
            job.handed_back(self._handed_back_why)
        elif self._responses.started:
            job.broke_off(reason.getErrorMessage())
        else:
            job.worker_lost_before_answer(reason.getErrorMessage())

    def detach(self) -> None:
        """
        Close this worker connection gently: the hub is stopping.
        """
        self._close()

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
        It takes no job from now on: one it took while its connection was
        closing would find no worker there.
        """
        self._closing = True
        self._leave_line()
        if not self.connected:
            # Lost already: a job this slot failed can still ask for the
            # abort when its consumer goes, and a TLS transport's
            # abortConnection raises once the connection is gone.
            return
        if abort:
            self.transport.abortConnection()
        else:
            self.transport.loseConnection()

    def _leave_line(self) -> None:
        if self._waiting is not None:
            waiting, self._waiting = self._waiting, None
            waiting.cancel()

    def _serve(self, job: Job) -> None:
        self._waiting = None
        if job.over:
            self._take_next()
            return
        self.job = job
        self._handing_back = False
        self._responses.expect(job.method)
        job.taken(self)
        self.transport.write(self._request_head(job))
        if job.body is not None:
            self._send_body(job.body)
        send_now(self.transport)

    def _request_head(self, job: Job) -> bytes:
        """What the worker is sent of C{job} before its body."""
        return job.head

    def _send_body(self, body: BufferedBody) -> None:
        """
        Send a request body: a small one at once, a larger one paused while
        the worker's connection is full.  The slot is not reused if the
        worker answers before the body is all sent.
        """
        sending = body.startProducing(self.transport)
        if sending.called:
            return
        self._upload = body
        self.transport.registerProducer(body, True)

        def sent(result: object) -> None:
            self._upload = None
            if self.connected:
                self.transport.unregisterProducer()

        # A body cut short by a lost connection is that connection's
        # failure, reported by connectionLost; one stopped by _stop_upload
        # fails too, and was unregistered there.
        sending.addCallbacks(sent, lambda reason: None)

    def _stop_upload(self) -> None:
        """
        The worker answered before the whole body was sent: send no more
        of it.  The rest would only delay the close, and it is read from
        the consumer's body, which is closed once the consumer is answered,
        or read again from the start by the next slot if the job is
        handed back.
        """
        body, self._upload = self._upload, None
        if body is not None:
            body.stopProducing()
            if self.connected:
                self.transport.unregisterProducer()

    # The response, as the parser hands it on.

    def response_head(self, head: ResponseHead) -> None:
        self._keep_alive = head.keep_alive
        if is_requeue_signal(head):
            self._handing_back = True
            self._handed_back_why = requeue_reason(head)
            return
        # Relayed once the rest of this read has parsed: a body that is
        # malformed from its first byte is then still the hub's own 502.
        self._head = head

    def _relay_head(self) -> None:
        head, self._head = self._head, None
        self.job.respond(head, self.transport)

    def response_body(self, data: bytes) -> None:
        if self._head is not None:
            self._relay_head()
        if not self._handing_back:
            self.job.relay_body(data)

    def response_done(self) -> None:
        if self._head is not None:
            self._relay_head()
        job = self.job
        self.job = None
        reusable = (
            self._keep_alive and not self.single_use and self._upload is None
            and not self._handing_back
        )
        self._stop_upload()
        # With jobs waiting, the worker gets the next one before this
        # job's consumer is answered: finishing a consumer's response
        # costs about as much as sending a job, and the worker would sit
        # idle through it.
        next_first = (
            reusable and self.connected and not self._closing
            and (self.available_early or self.pool.queued > 0)
        )
        if next_first:
            self._available()
        if self._handing_back:
            # A worker that hands a job back is not ready for another:
            # this slot closes, and the worker reattaches when it is.
            if not self._closing and self.connected:
                self._close()
            job.handed_back(self._handed_back_why)
        else:
            self.served += 1
            self._answered(job)
        if next_first or self._closing or not self.connected:
            return
        if not reusable:
            self._close()
        else:
            self._available()

    def _answered(self, job: Job) -> None:
        """C{job}'s response is all read: its consumer gets the rest of it."""
        job.response_done()

    def _available(self) -> None:
        """
        The worker is ready for a job on this connection: attached, or done
        with the last one.
        """
        self._take_next()

    def _take_next(self) -> None:
        # The last consumer may have paused this connection; the next
        # response must be read whatever happened to that one.
        self.transport.resumeProducing()
        self._waiting = self.pool.get()
        self._waiting.addCallbacks(self._serve, _ignore_cancel)

    def _bad_response(self, why: str) -> None:
        job = self.job
        self.job = None
        self._head = None
        self._close(abort=True)
        if job is None:
            _log.warn(
                "worker {worker} sent a malformed response while no request was pending: {why};"
                " dropping it", worker=self.worker, why=why,
            )
            return
        job.broke_off(f"malformed response: {why}")


def _ignore_cancel(reason: Failure) -> None:
    reason.trap(CancelledError)


class LegacySlot(Slot):
    """
    A slot from a worker that does not attach (a POTHEAD 0.4.3 worker, or
    any HTTP server that connects out and waits): it serves one request,
    then closes and connects again.
    """

    single_use = True
