"""
A slot whose worker offers it to several hubs and takes the oldest job
among them: the hub bids with its head job's age before it sends a job
(L{pothead.bidding}; docs/protocol.md, section 6b).
"""

from __future__ import annotations

from twisted.logger import Logger

from pothead.attach import OFFER_HEADER
from pothead.bidding import BID_METHOD, HELD, HOLD, OPEN, TAKE, bid_request, with_next
from pothead.http.client import ResponseHead
from pothead.hub.job import Job
from pothead.hub.pool import Pool
from pothead.hub.slot import Slot, is_requeue_signal

_log = Logger()


class BiddingSlot(Slot):
    """
    A L{Slot} that asks before it takes a job.

    Once attached, the slot bids; after each job, its worker tells it
    unasked, right after the response, what to do next.  Either way the
    worker's answer decides: C{take} sends the head job (or bids again if
    the line emptied meanwhile), C{open} waits in line as any slot does,
    C{hold} bids again if jobs wait and otherwise waits, out of line, for
    one to be queued (L{Pool.watching}).  An open slot the worker holds
    (another hub's job took it) leaves the line.
    """

    # The worker decides where the slot goes as soon as the response is
    # complete: the slot is ready for its answer before the consumer has
    # the whole response.
    available_early = True

    def __init__(self, pool: Pool[Job], worker: str) -> None:
        super().__init__(pool, worker, offered_elsewhere=True)
        self._bidding = False
        self._answer: ResponseHead | None = None
        self._taking = False
        self._served_one = False
        self._answered_jobs: list[Job] = []

    def dataReceived(self, data: bytes) -> None:
        try:
            super().dataReceived(data)
        finally:
            answered, self._answered_jobs = self._answered_jobs, []
            for job in answered:
                job.response_done()

    def _answered(self, job: Job) -> None:
        # The verdict usually comes in the same read as the response's end:
        # on "take" the next job goes out first, and this job's consumer
        # is answered after it, as a single hub's slot does it.
        self._answered_jobs.append(job)

    def _available(self) -> None:
        if self._served_one:
            # The verdict follows the response: an answer to a bid unmade.
            self._expect_answer()
        else:
            self._bid()

    def _expect_answer(self) -> None:
        self._bidding = True
        self._taking = False
        self._answer = None
        self._responses.expect(BID_METHOD)

    def _bid(self) -> None:
        self.pool.watching.discard(self)
        self._expect_answer()
        # As before any job: the last consumer may have paused reading.
        self.transport.resumeProducing()
        self.transport.write(bid_request(self.pool.head_waited()))

    def _hold(self) -> None:
        """
        Not now: bid again at once if jobs wait (the bid stands at the
        worker until the slot is free), else when one is queued.
        """
        if self.pool.queued:
            self._bid()
        else:
            self.pool.watching.add(self)

    def job_queued(self) -> None:
        idle = self.job is None and self._waiting is None and not self._bidding
        if idle and self.connected and not self._closing:
            self._bid()

    def _leave_line(self) -> None:
        self.pool.watching.discard(self)
        super()._leave_line()

    def response_head(self, head: ResponseHead) -> None:
        if not self._bidding:
            super().response_head(head)
            return
        self._answer = head

    def response_body(self, data: bytes) -> None:
        if not self._bidding:
            super().response_body(data)

    def response_done(self) -> None:
        if not self._bidding:
            super().response_done()
            return
        self._bidding = False
        head, self._answer = self._answer, None
        answer = head.values(OFFER_HEADER.lower())
        if answer == [TAKE]:
            self._taking = True
            self._take_next()
        elif answer == [OPEN]:
            self._take_next()
        elif answer == [HOLD]:
            self._hold()
        elif is_requeue_signal(head):
            # The worker detached (draining) as the bid went out.
            _log.debug("worker {worker} detached", worker=self.worker)
            self._close()
        else:
            _log.warn(
                "worker {worker} answered a bid with {code} {answer!r}; dropping the slot",
                worker=self.worker, code=head.code, answer=b", ".join(answer),
            )
            self._close(abort=True)

    def _take_next(self) -> None:
        if self._taking and not self.pool.queued:
            # Taken by another slot, or gone, since the bid: say so, and
            # the worker looks elsewhere.
            self._bid()
            return
        super()._take_next()

    def _serve(self, job: Job) -> None:
        if not job.over:
            self._taking = False
            self._served_one = True
        super()._serve(job)

    def _request_head(self, job: Job) -> bytes:
        # The job has left the line: its head is the next job.
        return with_next(job.head, self.pool.head_waited())

    def unsolicited(self, head: ResponseHead) -> None:
        if head.values(OFFER_HEADER.lower()) == [HELD] and is_requeue_signal(head):
            # Another hub's job took the slot: out of the line.
            self._leave_line()
            self._hold()
            return
        super().unsolicited(head)
