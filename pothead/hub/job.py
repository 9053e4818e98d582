"""
A job: one consumer request, from the moment the hub queues it until its
consumer has the whole answer.

The job owns the consumer side of the exchange: what to send to a worker,
how to relay the worker's response back with backpressure, and how to
answer the consumer itself when no worker can.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger

from pothead.address import host_port
from pothead.http.client import ResponseHead, request_head
from pothead.http.headers import HOP_BY_HOP, forwarded_headers
from pothead.http.message import reason_phrase
from pothead.hub.body import BufferedBody, body_size
from pothead.hub.limits import Limits

if TYPE_CHECKING:
    from pothead.http.server import ServerRequest
    from pothead.hub.pool import Pool

#: Methods a worker may safely be sent twice (RFC 9110 section 9.2.2).
IDEMPOTENT = frozenset(
    {b"GET", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"TRACE"}
)

#: How many requeue signals one job may collect before the hub answers 503
#: itself: a bound against a pool in which every worker keeps refusing.
MAX_REQUEUE_SIGNALS = 20

_log = Logger()


class Serving(Protocol):
    """
    What a job needs of the slot serving it.
    """

    #: What the worker called itself, for log lines.
    worker: str

    def abort(self) -> None:
        """
        Drop the worker's connection at once: nothing more of this job's
        response may come from it.
        """


class Job:
    """
    One consumer request waiting for, or being served by, a worker slot.

    The job decides what becomes of itself: its slot tells it what
    happened (L{worker_lost_before_answer}, L{handed_back}, L{broke_off}),
    and the job requeues itself, answers, or cuts its consumer off.

    :ivar slot: the slot serving it now, or L{None} while queued.
    :ivar gone: whether the consumer disconnected before its answer was done.
    :ivar responding: whether a worker's response is being relayed.
    :ivar head: the request head to send to a worker, as bytes.
    :ivar body: the request body to send after it, if any.
    :ivar queued_until: when it must leave the queue, while it is queued.
    :ivar queued_at: when the hub received it; its age in line, which a
        requeue does not reset.
    :ivar requeued: whether it was put back at the head of the queue.
    :ivar waited: whether it joined the queue (it was not refused at once).
    :ivar taken_at: when the slot that has it took it, or L{None} while
        queued (a requeue resets it).
    :ivar worker: the name of that slot's worker, or L{None}.
    :ivar worker_done_at: when the worker's response was all read, or L{None}.
    :ivar answered_by: C{"worker"} once a worker's response is relayed,
        C{"hub"} while the hub answers itself.
    :ivar queue_seconds: once it is over, the time it waited for the slot
        that answered it (until the hub answered it, if none did).
    :ivar worker_seconds: once it is over, the time from that slot taking
        it until the response was read, or L{None} if no slot took it.
    """

    # Thousands may wait in a queue at once: no instance dictionaries.
    __slots__ = (
        "request", "pool", "_clock", "limits", "_request_deadline", "_timer",
        "_lost_workers", "_hand_backs", "slot", "gone", "responding", "body", "head",
        "queued_until", "queued_at", "requeued", "_last_byte", "waited", "taken_at", "worker",
        "worker_done_at", "answered_by", "queue_seconds", "worker_seconds", "_server_timing",
    )

    def __init__(
        self, request: ServerRequest, pool: Pool[Job], clock: IReactorTime, limits: Limits,
        server_timing: bool = True, target: bytes | None = None,
    ) -> None:
        """
        :param server_timing: whether its response says, in a
            C{Server-Timing} header, how long it waited and how long the
            worker took.
        :param target: the request target the worker is sent, if not the
            consumer's (its pool strips a prefix).
        """
        self.request = request
        self.pool = pool
        self._clock = clock
        self.limits = limits
        # While queued, the pool's timer watches queued_until; once a slot
        # has the job, its own timer watches the request deadline.
        self.queued_at = clock.seconds()
        self._request_deadline = self.queued_at + limits.request_timeout
        self._timer: IDelayedCall | None = None
        self.queued_until = self._request_deadline
        self.requeued = False
        self.waited = False
        self.taken_at: float | None = None
        self.worker: str | None = None
        self.worker_done_at: float | None = None
        self.answered_by = "hub"
        self.queue_seconds = 0.0
        self.worker_seconds: float | None = None
        self._server_timing = server_timing
        self._lost_workers = 0
        self._hand_backs = 0
        self.slot: Serving | None = None
        self.gone = False
        self.responding = False
        self.body = None
        length = None
        if request.content is not None:
            # The consumer framed a body, even an empty one; the worker is
            # then told its length, as it would be serving the consumer
            # itself.
            length = body_size(request.content)
            self.body = BufferedBody(request.content, length)
        self.head = request_head(
            request.head.method, target or request.head.target, self._forwarded_headers(request),
            length,
        )

    @property
    def method(self) -> bytes:
        return self.request.head.method

    @property
    def what(self) -> str:
        """The request line's method and target, and its pool, for log lines."""
        head = self.request.head
        return (f"{head.method.decode('latin-1')} {head.target.decode('latin-1')}"
                f" in pool {self.pool.name}")

    @property
    def code(self) -> int:
        """The status its consumer is answered with, once answered."""
        return self.request.code

    @property
    def sent(self) -> int:
        """Response body bytes sent to its consumer."""
        return self.request.sent

    @property
    def body_length(self) -> int | None:
        """Its request body's size, if it has one."""
        return None if self.body is None else self.body.length

    @property
    def idempotent(self) -> bool:
        return self.request.head.method in IDEMPOTENT

    @property
    def over(self) -> bool:
        """Whether the consumer has had its answer, or has gone."""
        return self.gone or self.request.finished

    @staticmethod
    def _forwarded_headers(request: ServerRequest) -> dict[bytes, list[bytes]]:
        host = request.head.host
        peer = request.client_address()
        return forwarded_headers(
            request.head.fields,
            getattr(peer, "host", "unix"),
            b"https" if request.is_secure() else b"http",
            host,
            None if host is not None else host_port(request.own_address(), unix="localhost").encode(),
        )

    def queue(self) -> None:
        """
        Join the end of the pool's queue, or answer 503 if it is full.
        """
        if self.pool.queued >= self.limits.max_queue:
            # A line per request would flood the log just when the hub
            # is busiest; the access log has each of them.
            self.pool.turned_away.count(f"{self.what} from {self.peer}")
            self._answer_unavailable("queue_full")
            return
        self.waited = True
        self._wait_in_line()
        self.pool.put(self)

    def _requeue(self, reason: str) -> None:
        """
        Go back to the head of the pool's queue, unprocessed.
        """
        self.pool.metrics.requeues[reason] += 1
        self.slot = None
        # Back in line, it is waiting again: until another slot takes it,
        # its time is queue time, and no worker has it.
        self.taken_at = self.worker = None
        self.requeued = True
        self._settle()
        self._wait_in_line()
        self.pool.put_first(self)

    def taken(self, slot: Serving) -> None:
        """
        A slot has taken this job out of the queue to serve it.
        """
        self.slot = slot
        now = self._clock.seconds()
        if self.requeued:
            self.pool.metrics.retries += 1
        self.taken_at = now
        self.worker = slot.worker
        delay = max(0.0, self._request_deadline - now)
        self._timer = self._clock.callLater(delay, self._time_up)

    def worker_lost_before_answer(self, why: str) -> None:
        """
        The slot's connection ended before any byte of a response: the job
        goes back to the head of the queue if the worker may safely be sent
        it again (an idempotent method, within ``--retries``), else 502.
        """
        slot, self.slot = self.slot, None
        if self.over:
            return
        if self.idempotent and self._lost_workers < self.limits.retries:
            self._lost_workers += 1
            _log.info(
                "worker {worker} lost before answering {request} from {peer}; requeued",
                worker=slot.worker, request=self.what, peer=self.peer,
            )
            self._requeue("lost_worker")
        else:
            self._worker_failed(slot.worker, why)

    def handed_back(self, why: str = "requeue_signal") -> None:
        """
        The worker answered with the requeue signal, unprocessed: back to
        the head of the queue, up to L{MAX_REQUEUE_SIGNALS} times, then 503.

        :param why: C{"requeue_signal"}: the worker refused the job;
            C{"withdrawn"}: the slot had just been taken by another hub's
            job (late binding); C{"drain"}: the worker is draining.  Only
            refusals count towards the limit: the others say nothing
            about this job.
        """
        slot, self.slot = self.slot, None
        if why == "requeue_signal":
            self._hand_backs += 1
        if self.over:
            return
        if self._hand_backs > MAX_REQUEUE_SIGNALS:
            self.unavailable(f"handed back by workers {self._hand_backs} times", "requeue_limit")
        else:
            (_log.debug if why == "withdrawn" else _log.info)(
                "worker {worker} handed back {request}{draining}", worker=slot.worker,
                request=self.what, draining=": draining" if why == "drain" else "",
            )
            self._requeue(why)

    def broke_off(self, why: str) -> None:
        """
        The worker's response failed after it began (malformed, or its
        connection ended): a consumer who has part of it is cut off, one
        who has none is answered 502.  Never retried: the worker may have
        done the work.
        """
        slot = self.slot
        if self.over:
            return
        if self.responding:
            self.response_broke(f"worker {slot.worker}: {why}")
        else:
            self._worker_failed(slot.worker, why)

    def _worker_failed(self, worker: str, why: str) -> None:
        _log.warn(
            "worker {worker} failed {request} from {peer}: {why}; answering 502",
            worker=worker, request=self.what, peer=self.peer, why=why,
        )
        self.answer(502, "The worker failed to answer this request.", "worker_failed")

    def _wait_in_line(self) -> None:
        waited_enough = self._clock.seconds() + self.limits.queue_timeout
        self.queued_until = min(waited_enough, self._request_deadline)

    def waited_too_long(self) -> None:
        """
        The pool took this job out of its queue at its C{queued_until}:
        answer 503 if it waited the queue timeout, 504 if its request
        timeout came first.
        """
        if self._clock.seconds() < self._request_deadline:
            self.unavailable(f"waited {self.limits.queue_timeout:g}s for a worker", "queue_timeout")
        else:
            self._too_late()

    def _time_up(self) -> None:
        """
        The job's one timer went off: the request deadline until the
        response head, the stall watch after it.
        """
        self._timer = None
        if self.responding:
            self._check_stall()
        else:
            self._no_response()

    def _watch(self, seconds: float) -> None:
        # Moving the request deadline's timer costs less than replacing it.
        if self._timer is not None and self._timer.active():
            self._timer.reset(seconds)
        else:
            self._timer = self._clock.callLater(seconds, self._time_up)

    def _no_response(self) -> None:
        # The worker may still be busy with it; drop that connection so a
        # late answer can never reach anyone.
        self.slot.abort()
        self._too_late()

    def _too_late(self) -> None:
        why = f"no response within {self.limits.request_timeout:g}s"
        _log.warn(
            "{request} from {peer}: 504, {why}", request=self.what, peer=self.peer, why=why,
        )
        self.answer(504, "The worker did not answer in time.", "request_timeout")

    def unavailable(self, why: str, reason: str) -> None:
        """
        Answer 503 with Retry-After: no worker will take this job now.

        :param why: what happened, for the log line.
        :param reason: the refusal's name (L{pothead.hub.metrics.REFUSAL_REASONS}).
        """
        _log.warn(
            "{request} from {peer}: 503, {why}", request=self.what, peer=self.peer, why=why,
        )
        self._answer_unavailable(reason)

    def _answer_unavailable(self, reason: str) -> None:
        self.answer(
            503,
            "No worker is available; try again later.",
            reason,
            ((b"Retry-After", b"%d" % (self.limits.retry_after,)),),
        )

    def _settle(self) -> None:
        """
        The job is over, or goes back to the queue: its timer (the request
        deadline, or the stall watch once the response is being relayed)
        stops.
        """
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    @property
    def peer(self) -> str:
        """The consumer's address, for log lines."""
        return host_port(self.request.client_address())

    def consumer_lost(self) -> None:
        """
        The consumer's connection closed before its answer was complete.

        Queued, the job leaves the line, so no worker ever sees it; being
        served, the worker connection is dropped, so the rest of the
        response can never reach the next job's consumer.  A consumer the
        hub cut off itself (L{abort}) did not leave: that was dealt with.
        """
        if self.gone:
            return
        self.gone = True
        self._settle()
        if self.slot is None:
            if self.pool.discard(self):
                self.pool.metrics.left["queued"] += 1
                _log.info("consumer {peer} left the queue: {request}", peer=self.peer,
                          request=self.what)
        else:
            self.pool.metrics.left["served"] += 1
            _log.info(
                "consumer {peer} went away during {request}; dropping worker {worker}'s slot",
                peer=self.peer, request=self.what, worker=self.slot.worker,
            )
            self.slot.abort()

    def respond(self, head: ResponseHead, worker: IPushProducer) -> None:
        """
        Start the consumer's response with the worker's status, reason
        phrase and every end-to-end header; the body follows through
        L{relay_body}.

        :param worker: the worker's connection, paused while the consumer
            reads more slowly than the worker writes, so the hub's memory
            stays flat whatever the body's size.
        """
        request = self.request
        if self.gone or request.finished:
            self._settle()
            return
        self.responding = True
        self.answered_by = "worker"
        fields = _relayed_headers(head)
        if self._server_timing:
            fields.append((b"Server-Timing", self._timing()))
        request.start(head.code, head.phrase, fields, head.content_length)
        request.register_producer(worker)
        # One timer for the whole body, not one per piece: each piece only
        # notes the time, and the timer, when it fires, looks how long ago.
        self._last_byte = self._clock.seconds()
        self._watch(self.limits.stall_timeout)

    def relay_body(self, data: bytes) -> None:
        """
        Pass on a piece of the worker's response body.
        """
        if self.responding and not self.gone:
            self._last_byte = self._clock.seconds()
            self.request.write(data)

    def _check_stall(self) -> None:
        if self.gone:
            return
        quiet = self._clock.seconds() - self._last_byte
        stall = self.limits.stall_timeout
        if quiet < stall:
            self._watch(stall - quiet)
            return
        _log.warn(
            "response to {request} from {peer} stalled: nothing from worker {worker} for "
            "{stall:g}s; both cut off",
            request=self.what, peer=self.peer, worker=self.slot.worker, stall=stall,
        )
        self.pool.metrics.refusals["stalled"] += 1
        self.responding = False
        self.request.unregister_producer()
        self.abort()
        self.slot.abort()

    def response_done(self) -> None:
        """
        The worker's response is complete: so is the consumer's.
        """
        self.worker_done_at = self._clock.seconds()
        self._settle()
        if self.responding and not self.gone:
            self.responding = False
            self.request.unregister_producer()
            self.request.finish()

    def response_broke(self, why: str) -> None:
        """
        The worker's response broke off: cut the consumer off too, so that
        a truncated body never looks complete.
        """
        self._settle()
        if self.responding and not self.gone:
            self.responding = False
            self.request.unregister_producer()
            self.pool.metrics.refusals["broke_off"] += 1
            _log.warn(
                "worker response to {request} broke off: {why}; consumer {peer} cut off",
                request=self.what, why=why, peer=self.peer,
            )
            self.abort()

    def answer(
        self, code: int, message: str, reason: str,
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        """
        Answer the consumer from the hub itself, when no worker will.

        A consumer that already has part of a worker's response is cut off
        instead: a truncated body must never look complete.

        :param reason: why (L{pothead.hub.metrics.REFUSAL_REASONS}): counted,
            and named in the C{Server-Timing} header of the phase it ended.
        """
        request = self.request
        self._settle()
        if self.gone or request.finished:
            return
        self.pool.metrics.refusals[reason] += 1
        if request.started:
            self.abort()
            return
        fields = [(b"Content-Type", b"text/plain; charset=utf-8"), *headers]
        if self._server_timing:
            fields.append((b"Server-Timing", self._timing(reason)))
        request.answer(code, reason_phrase(code), fields, (message + "\n").encode("utf-8"))

    def _timing(self, ended: str | None = None) -> bytes:
        """
        The C{Server-Timing} value of a response starting now: how long the
        job waited in the queue, and how long its worker took to the
        response head (if a worker took it), in milliseconds.

        :param ended: why the hub answered itself, named in the last phase.
        """
        now = self._clock.seconds()
        taken = self.taken_at
        if taken is None:
            timing = b"queue;dur=%.1f" % ((now - self.queued_at) * 1000,)
        else:
            timing = b"queue;dur=%.1f, worker;dur=%.1f" % (
                (taken - self.queued_at) * 1000, (now - taken) * 1000)
        if ended is not None:
            timing += b';desc="%s"' % ended.encode("ascii")
        return timing

    def finished(self) -> None:
        """
        The consumer has its whole answer: the job's times are settled, and
        counted.
        """
        # The hub's clock is the wall clock: a step back (NTP) must not
        # make a negative duration.
        now = self._clock.seconds()
        taken = self.taken_at
        self.queue_seconds = max(0.0, (now if taken is None else taken) - self.queued_at)
        if taken is not None:
            self.worker_seconds = max(0.0, (self.worker_done_at or now) - taken)
        self.pool.metrics.finished(self, max(0.0, now - self.queued_at))

    def abort(self) -> None:
        """
        Cut the consumer's connection: it gets no more of this response.
        """
        self.gone = True
        self.request.abort()


def _relayed_headers(head: ResponseHead) -> list[tuple[bytes, bytes]]:
    """
    The worker's end-to-end headers, in the worker's order, with its
    ``Content-Length`` where it stood.

    ``Content-Length`` is passed on whenever the worker sent one and the
    body was not chunked: for a HEAD, 204 or 304 it describes the
    representation, otherwise it equals the body's length.
    """
    length = head.content_length
    fields = []
    for name, value in head.headers:
        lower = name.lower()
        if lower == b"content-length":
            if length is not None:
                fields.append((b"Content-Length", length))
                length = None
        elif lower not in HOP_BY_HOP:
            fields.append((name, value))
    return fields
