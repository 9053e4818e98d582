"""
A slot whose worker offers it to several hubs and takes the oldest job
among them: before it sends a job, the hub bids with its head job's age
(L{pothead.bidding}; docs/protocol.md, section 6b).
"""

from __future__ import annotations

from twisted.logger import Logger

from pothead.attach import OFFER_HEADER
from pothead.bidding import BID_METHOD, HELD, HOLD, OPEN, RENEWED, TAKE, bid_request
from pothead.http.client import ResponseHead
from pothead.hub.job import Job
from pothead.hub.slot import Slot, is_requeue_signal

_log = Logger()


class BiddingSlot(Slot):
    """
    A L{Slot} that asks before it takes a job.

    Whenever the worker is ready for one on this connection (attached, done
    with a job, or renewed), the slot bids, and what it does next is the
    worker's answer: C{take} sends the head job (or bids again if the line
    emptied meanwhile), C{open} waits in line as any slot does, C{hold}
    waits.  An open slot the worker holds (another hub's job took it)
    leaves the line.

    A held slot whose worker last heard "none" from it is not renewed
    when the slot is free again: the worker does not wait for a hub it
    knows has nothing.  So that slot bids of its own accord as soon as a
    job is queued (L{Pool.watching}).
    """

    # The worker waits for this slot's bid before it gives the slot to
    # any hub: it goes before the consumer's response is finished.
    available_early = True

    def __init__(self, pool, worker: str) -> None:
        super().__init__(pool, worker, offered_elsewhere=True)
        self._bidding = False
        self._answer: ResponseHead | None = None
        self._taking = False
        self._priced = False

    def _available(self) -> None:
        self._bid()

    def _bid(self) -> None:
        self.pool.watching.discard(self)
        self._bidding = True
        self._taking = False
        self._answer = None
        self._responses.expect(BID_METHOD)
        # As before any job: the last consumer may have paused reading.
        self.transport.resumeProducing()
        waited = self.pool.head_waited()
        self._priced = waited is not None
        self.transport.write(bid_request(waited))

    def _hold(self) -> None:
        """
        Send nothing until renewed; a worker that heard "none" from this
        slot will not renew it, so it bids when there is a job.
        """
        if self._priced:
            return
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
        elif answer == [RENEWED]:
            # A renewal crossed a bid this slot made of its own accord:
            # the bid stands, and its answer is still to come.
            self._bidding = True
            self._responses.expect(BID_METHOD)
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
        super()._serve(job)

    def unsolicited(self, head: ResponseHead) -> None:
        offer = head.values(OFFER_HEADER.lower())
        if offer == [HELD] and is_requeue_signal(head):
            # Another hub's job took the slot: out of the line.  It was
            # open, so the worker last heard "none" from it.
            self._leave_line()
            self._priced = False
            self._hold()
            return
        if offer == [RENEWED] and head.code == 200:
            if self._waiting is None and self.job is None:
                self._bid()
            return
        super().unsolicited(head)
