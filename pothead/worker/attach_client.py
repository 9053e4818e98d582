"""
The worker's end of a slot: open a connection to the hub, attach, then
serve HTTP on it.
"""

from __future__ import annotations

import random
from enum import Enum
from typing import Sequence

from httptools import HttpResponseParser
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from pothead.address import host_port
from pothead.attach import (
    BIDS_HEADER,
    DETACH_NOTICE,
    DRAIN_NOTICE,
    UPGRADE_TOKENS,
    WITHDRAW_NOTICE,
    HeadReceiver,
    attach_request,
    header_tokens,
)
from pothead.bidding import (
    BID_HEADER,
    HOLD,
    HOLD_NOTICE,
    OPEN,
    TAKE,
    BadBid,
    bid_answer,
    next_waited,
    parse_bid,
    verdict_notice,
)
from pothead.http.server import ServerRequest
from pothead.http.sockets import tune_tcp
from pothead.worker.admission import FixedAdmission, IAdmission
from pothead.worker.metrics import WorkerMetrics, refusal
from pothead.worker.slot_server import SlotChannel, SlotServer

_log = Logger()

#: The longest wait between two attempts to reach a hub, in seconds,
#: before jitter (which adds up to half again).
MAX_RETRY_DELAY = 5.0

class Offer(Enum):
    """
    Where a slot's offer stands at one hub that speaks bids
    (L{pothead.bidding}), as the worker sees it.
    """

    #: Its bid for a job stands, unanswered, until the slot is free.
    BID = "bid"
    #: Told to take: its job (or a bid of none) comes next.
    TAKEN = "taken"
    #: Told open: it sends a job whenever it has one.
    OPEN = "open"
    #: No bid stands: the hub bids when it has a job.
    HELD = "held"


_AFTER_ANSWER = {TAKE: Offer.TAKEN, HOLD: Offer.HELD, OPEN: Offer.OPEN}


class AttachClient(HeadReceiver):
    """
    One slot's connection to the hub.

    Nothing is sent until L{attach} is called, so a slot can hold an open
    connection while the worker decides whether it may take work.
    """

    parser_class = HttpResponseParser

    def __init__(self, server: SlotServer, pool: str | Sequence[str], token: str | None, name: str,
                 timeout: float, clock: IReactorTime) -> None:
        super().__init__()
        self._server = server
        self._pool = pool
        self._token = token
        self.name = name
        self.timeout = timeout
        self.callLater = clock.callLater
        self._clock = clock
        self._attached: Deferred[None] | None = None
        self._channel: SlotChannel | None = None
        self._draining = False
        self._detached = False
        self._closed: list[Deferred[None]] = []
        self.connected_now = False
        self._prepared: Deferred[None] | None = None
        self._admitting: Deferred | None = None
        #: When it asked for its admission (by the metrics' clock), while
        #: it waits for it.
        self._asked: float | None = None
        self._asked_at_once = False
        self._ticket = None
        #: Whether the hub speaks bids on this connection.
        self.bids = False
        self.offer = Offer.HELD
        #: What its last bid said: seconds its head job had waited, or
        #: L{None} for none.
        self.waited: float | None = None
        #: The hub, as the worker's record of its line knows it.
        self.hub = ""
        self._bid: ServerRequest | None = None
        self._promised: IDelayedCall | None = None
        self._serving_job = False
        self._served = False

    def connectionMade(self) -> None:
        # The handshake timeout starts with attach(), not with the connect.
        self.connected_now = True
        self.hub = host_port(self.transport.getPeer(), unix="localhost")
        self.factory.clients.add(self)
        tune_tcp(self.transport)

    def prepare(self) -> Deferred[None]:
        """
        Get this slot ready, as L{ClientService}'s C{prepareConnection}:
        wait until the slot's last app call has returned (a slot dropped
        mid-job must not take a new job its thread cannot start), then for
        the worker's admission, then attach.

        :return: fires when the slot serves HTTP or the attempt is over; it
            never fails (see L{attach}), and it fires at the latest when the
            connection is lost, before ClientService hears of the loss.
        """
        self._prepared = Deferred()
        self._admitting = self.factory.until_app_idle()
        self._admitting.addCallback(self._admit)
        self._admitting.addCallbacks(self._admitted, lambda failure: None)
        return self._prepared

    def _admit(self, _: None) -> Deferred:
        self._asked = self.factory.metrics.now()
        admitting = self.factory.admission.admit()
        self._asked_at_once = admitting.called
        return admitting

    def _admitted(self, ticket) -> None:
        self._admitting = None
        if self._asked is not None:
            self.factory.metrics.admitted(self._asked, self._asked_at_once)
            self._asked = None
        self._ticket = ticket
        if not self.connected_now or self._draining:
            self._ready()
            self.transport.loseConnection()
            return
        self.attach().addBoth(lambda _: self._ready())

    def _ready(self) -> None:
        if self._prepared is not None:
            prepared, self._prepared = self._prepared, None
            prepared.callback(None)

    def attach(self) -> Deferred[None]:
        """
        Send the attach request.

        :return: fires when the hub has switched protocols and this slot
            serves HTTP, or when the attempt is over: refused, a bad answer,
            a timeout or a lost connection.  It never fails:
            L{ClientService} cannot take a failed preparation followed by the
            connection's end, so refusals back off through
            L{WorkerSlot.retry_delay} instead.
        """
        host = host_port(self.transport.getPeer(), unix="localhost")
        self._attached = Deferred()
        self.setTimeout(self.timeout)
        self.transport.write(
            attach_request(host, self._pool, self._token, self.name, self.factory.offered_to)
        )
        return self._attached

    def head_received(self, status_line: bytes, headers: Headers) -> None:
        parts = status_line.split(b" ", 2)
        code = parts[1] if len(parts) > 1 else b""
        upgrade = [t.lower() for t in header_tokens(headers, b"upgrade")]
        if code != b"101" or UPGRADE_TOKENS[0] not in upgrade:
            self._fail(f"hub answered {status_line.decode('latin-1')!r}", refusal(code))
            self.transport.loseConnection()
            return
        self.factory.refusals = 0
        self.bids = header_tokens(headers, BIDS_HEADER.lower()) == [b"1"]
        # A hub that speaks bids is held, not detached, if the slot was
        # taken meanwhile (it bids first, and is answered "hold").
        if self._draining or not (self.bids or self.factory.free_for(self)):
            notice = DRAIN_NOTICE if self._draining else WITHDRAW_NOTICE
            # The hub counts this slot as attached already and may have sent
            # it a job: answer that with the detach notice, never a reset.
            # (Taken by another hub's job meanwhile, the slot is offered
            # here again once that job is done.)
            self._detach(notice)
            attached, self._attached = self._attached, None
            attached.callback(None)
            return
        self._channel = self._server.serve(self)
        self.switch_to(self._channel)
        attached, self._attached = self._attached, None
        attached.callback(None)

    def drain(self) -> Deferred[None]:
        """
        Leave the hub without losing a request: an idle slot detaches at
        once, a busy one as soon as its response is complete.

        :return: fires when the connection is closed.
        """
        if not self.connected_now:
            return succeed(None)
        closed: Deferred[None] = Deferred()
        self._closed.append(closed)
        self._draining = True
        if self._channel is None:
            if self._attached is None:
                # Not attached, nor attaching: the hub sends this slot nothing.
                self.transport.loseConnection()
            # Otherwise the hub's answer to the attach decides; see
            # head_received.
        elif not self._channel.busy or self.offer is Offer.BID:
            # The detach notice answers a standing bid too.
            self._detach()
        return closed

    @property
    def attached(self) -> bool:
        """Whether the hub is served HTTP on this connection now."""
        return self._channel is not None and not self._detached and self.connected_now

    @property
    def state(self) -> str:
        """
        What this connection does for its slot (L{WorkerSlot.state}, which
        knows whether it is busy): C{idle}, C{attaching},
        C{waiting_admission} or C{detached}.
        """
        if self.attached:
            return "idle"
        if self._attached is not None:
            return "attaching"
        if self._asked is not None:
            return "waiting_admission"
        return "detached"

    # The slot channel's Attachment.

    @property
    def ticket(self) -> object | None:
        """This connection's admission ticket."""
        return self._ticket

    def detaching(self) -> bool:
        # A gated slot serves one job per admission.
        return self._draining or (self.factory.admission.per_job and self._served)

    def response_written(self) -> None:
        # The verdict goes out with the response's last bytes: the hub that
        # served may send its next job as soon as it has read them.
        if not self.detaching():
            self._job_over()

    def hand_back(self) -> bool:
        # The detach notice is a requeue signal: it answers the request, and
        # the slot attaches again when its admission allows.
        self._serving_job = False
        self._detach()
        return True

    def channel_idle(self) -> None:
        if self.detaching():
            self._detach()
        self._job_over()

    def _job_over(self) -> None:
        # Once per job: when its response is written, or else when the
        # channel is idle (a slot that detaches after it).
        if self._serving_job:
            self._serving_job = False
            self.factory.job_done(self)

    def claim(self, request: ServerRequest) -> bool:
        """
        A request arrived: a bid, or a job.  Serve a job if the slot is
        free, and take the slot's offers at other hubs back; else hand it
        back to this hub with the detach notice (it lost the race to
        another hub's job).
        """
        if self.bids:
            if request.head.values(BID_HEADER.lower()):
                self._bid_received(request)
                return False
            if self.offer is Offer.HELD:
                # It crossed the hold notice, which the hub takes for its
                # answer before it closes the connection.
                self.transport.loseConnection()
                return False
            self.factory.lines.heard(
                self.hub, next_waited(request.head), self._clock.seconds(), self.factory
            )
            self._keep_promise()
        if self.factory.claim(self):
            self._serving_job = self._served = True
            return True
        self._detach(WITHDRAW_NOTICE)
        return False

    # Bids (pothead.bidding): the hub bids, the slot answers.

    def waited_now(self, now: float) -> float | None:
        """
        How long the hub's head job has waited now, as far as the worker
        knows (L{HubLines}).
        """
        return self.factory.lines.waited_now(self.hub, now)

    def _bid_received(self, request: ServerRequest) -> None:
        head = request.head
        try:
            self.waited = parse_bid(head.method, head.target, head.values(BID_HEADER.lower()))
        except BadBid as error:
            _log.warn("slot {slot}: dropping the hub's connection: {why}", slot=self.name,
                      why=error)
            self.transport.abortConnection()
            return
        taken = self.offer is Offer.TAKEN
        self._offer(Offer.BID)
        self._bid = request
        if self.waited is not None:
            self.factory.lines.standing(self, True)
        self.factory.lines.heard(self.hub, self.waited, self._clock.seconds(), self.factory)
        self.factory.bid_received(self, taken)

    def answer(self, answer: bytes) -> None:
        """
        Answer the hub's standing bid: L{TAKE}, L{HOLD} or L{OPEN}.
        """
        request, self._bid = self._bid, None
        self._offer(_AFTER_ANSWER[answer])
        self.factory.lines.standing(self, False)
        request.answer(*bid_answer(answer))

    def verdict(self, answer: bytes) -> None:
        """
        Tell the hub, right after its job's response, what it does next:
        L{TAKE}, L{HOLD} or L{OPEN}, as if it had bid.
        """
        self._offer(_AFTER_ANSWER[answer])
        self.transport.write(verdict_notice(answer))

    def _offer(self, offer: Offer) -> None:
        self.offer = offer
        self._keep_promise()
        if offer is Offer.TAKEN:
            # A hub told to take that sends nothing (stopped, not gone)
            # must not keep the slot from the others.
            self._promised = self.callLater(self.timeout, self._promise_broken)

    def _keep_promise(self) -> None:
        if self._promised is not None:
            if self._promised.active():
                self._promised.cancel()
            self._promised = None

    def _promise_broken(self) -> None:
        self._promised = None
        _log.warn(
            "slot {slot}: hub {hub} was told to take the slot and sent nothing within"
            " {timeout:g}s (--attach-timeout); dropping the connection",
            slot=self.name, hub=self.hub, timeout=self.timeout,
        )
        self.transport.abortConnection()

    def withhold(self) -> None:
        """
        The slot is busy, or promised to another hub: keep this hub from
        sending it a job.  An open offer is held (at a hub without bids,
        withdrawn), a bid of none answered C{hold}; a bid for a job
        stands, to be weighed when the slot is free.
        """
        if not self.bids:
            self.withdraw()
        elif not self.attached:
            return
        elif self.offer is Offer.BID and self.waited is None:
            self.answer(HOLD)
        elif self.offer is Offer.OPEN:
            self._offer(Offer.HELD)
            self.transport.write(HOLD_NOTICE)

    def withdraw(self) -> None:
        """
        Another hub's job took this slot: take the offer back here.  Idle
        and attached, it detaches now (a job this hub sends meanwhile is
        answered by the notice, and requeued there); attaching, it detaches
        when the hub answers; not yet attaching, it waits for the slot's
        app call to end anyway (L{prepare}).
        """
        if self._channel is not None and not self._channel.busy:
            self._detach(WITHDRAW_NOTICE)

    def app_call_started(self) -> None:
        self.factory.app_call_started()

    def app_call_ended(self) -> None:
        # The slot's, not this connection's: the call may outlive it.
        self.factory.app_call_ended()

    def _detach(self, notice: bytes | None = None) -> None:
        # The notice is a requeue signal: should the hub have sent a request
        # at this very moment, it takes the notice as that request's answer
        # and gives the request to another slot.  Half-closing, not closing,
        # keeps the hub's request from meeting a reset that could destroy
        # the notice in flight; the hub closes its end on reading it.
        if self._detached:
            return
        self._detached = True
        if notice is None:
            notice = DRAIN_NOTICE if self._draining else DETACH_NOTICE
        self.transport.write(notice)
        # A TLS transport sends what it was given on the next reactor turn;
        # half-close after that, or the close would overtake the notice.
        self.callLater(0, self._half_close)

    def _half_close(self) -> None:
        if self.connected_now:
            getattr(self.transport, "loseWriteConnection", self.transport.loseConnection)()

    def dataReceived(self, data: bytes) -> None:
        if self._detached:
            return
        super().dataReceived(data)

    def head_failed(self, why: str) -> None:
        self._fail(f"bad answer from hub: {why}", "bad_answer")
        super().head_failed(why)

    def timeoutConnection(self) -> None:
        # Silent or slow, it is the hub that did not answer in time.
        why = f"no answer from hub within {self.timeout:g}s (--attach-timeout)"
        self._fail(why, "timeout")
        super().head_failed(why)

    def connectionLost(self, reason: Failure = None) -> None:
        self.connected_now = False
        self._keep_promise()
        self.factory.clients.discard(self)
        self.factory.lines.standing(self, False)
        self.factory.lost(self)
        self._fail(f"connection lost while attaching: {reason.getErrorMessage()}", "lost")
        self._asked = None
        if self._admitting is not None:
            self._admitting.cancel()
        if self._ticket is not None:
            ticket, self._ticket = self._ticket, None
            ticket.done()
        self._ready()
        super().connectionLost(reason)
        closed, self._closed = self._closed, []
        for d in closed:
            d.callback(None)

    def _fail(self, why: str, reason: str) -> None:
        """
        The attach in flight, if any, failed: for C{reason}, one of
        L{pothead.worker.metrics.ATTACH_FAILURES}.
        """
        if self._attached is not None:
            attached, self._attached = self._attached, None
            self.factory.refusals += 1
            self.factory.metrics.attach_failed(reason)
            _log.warn("slot {slot} not attached: {why}", slot=self.name, why=why)
            attached.callback(None)


class HubLines:
    """
    What a worker last heard of each hub's line, from any of its slots:
    how long the hub's head job had waited, and when it heard so.

    A bid made on one slot's connection goes stale once the hub hands its
    head job to another slot; the hub's next message on any connection (a
    bid, or a job saying what is next in line) says what is at the head
    now.  Between a slot telling a hub to take and that hub's job, what is
    behind the job is unknown, and no other slot counts on it.  A hub
    heard to have nothing has its standing bids answered "hold", so that
    it bids again when it has a job; a hub heard to have one is offered
    every free slot on which it has a bid standing.
    """

    def __init__(self) -> None:
        self._heard: dict[str, tuple[float | None, float]] = {}
        self._standing: dict[str, set[AttachClient]] = {}
        self._pending: set[str] = set()

    def heard(self, hub: str, waited: float | None, at: float, source: WorkerSlot) -> None:
        """
        C{hub} said, on a connection of slot C{source}, that its head job
        had waited C{waited} seconds (L{None}: it has none) at C{at}.
        """
        self._heard[hub] = (waited, at)
        self._pending.discard(hub)
        elsewhere = [c for c in self._standing.get(hub, ()) if c.factory is not source]
        for client in elsewhere:
            if waited is not None:
                client.factory.reconsider()
            elif client.offer is Offer.BID and client.attached:
                client.answer(HOLD)

    def taken(self, hub: str, at: float) -> None:
        """A slot told C{hub} to take it: what is behind that job is unknown."""
        self._heard[hub] = (None, at)
        self._pending.add(hub)

    def pending(self, hub: str) -> bool:
        """Whether C{hub} was told to take a slot and has not been heard since."""
        return hub in self._pending

    def waited_now(self, hub: str, now: float) -> float | None:
        """How long C{hub}'s head job has waited at C{now}, as last heard."""
        waited, at = self._heard.get(hub, (None, now))
        return None if waited is None else waited + now - at

    def standing(self, client: AttachClient, stands: bool) -> None:
        """Whether C{client}'s hub has a bid for a job standing on it."""
        if stands:
            self._standing.setdefault(client.hub, set()).add(client)
        else:
            standing = self._standing.get(client.hub)
            if standing is not None:
                standing.discard(client)
                if not standing:
                    del self._standing[client.hub]


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


class WorkerSlot(Factory):
    """
    One slot of the worker's capacity, kept attached across connections:
    its L{ClientService} reconnects through it, and it builds an
    L{AttachClient} for each connection, counts the app calls that run on
    the slot (so that a new connection takes no job while one still runs),
    and drains.

    :ivar clients: the slot's connections that are open now.
    :ivar draining: once set, new connections are refused, so a draining
        worker does not reattach.
    :ivar admission: decides when the slot may attach.
    """

    def __init__(self, server: SlotServer, pool: str | Sequence[str], token: str | None, name: str,
                 timeout: float, clock: IReactorTime,
                 admission: IAdmission | None = None, offered_to: int = 1,
                 lines: HubLines | None = None, metrics: WorkerMetrics | None = None) -> None:
        """
        :param offered_to: how many hubs the slot is offered to at once,
            each through a connection of its own (late binding); it
            changes as hubs come and go.
        :param lines: what the worker knows of each hub's line, shared by
            all its slots.
        :param metrics: counts its attach failures and admission waits,
            shared by all its slots.
        """
        self._args = (server, pool, token, name, timeout, clock)
        self._clock = clock
        self.lines = lines or HubLines()
        self.metrics = metrics or WorkerMetrics()
        self.offered_to = offered_to
        self.admission = admission or FixedAdmission()
        self.clients: set[AttachClient] = set()
        self.draining = False
        self.refusals = 0
        self._app_calls = 0
        self._app_idle: list[Deferred[None]] = []
        self._serving: AttachClient | None = None

    def claim(self, client: AttachClient) -> bool:
        """
        A job arrived on C{client}: whether the slot is free to serve it.
        If so, it is C{client}'s until its channel is idle again, and its
        offers at the other hubs are withheld.
        """
        if not self.free_for(client):
            return False
        self._give(client)
        return True

    @property
    def state(self) -> str:
        """
        What the slot is doing now, one of
        L{pothead.worker.metrics.SLOT_STATES}: C{busy} while an app call
        runs on it, else what its most advanced connection does.
        """
        if self._app_calls:
            return "busy"
        states = {client.state for client in self.clients}
        for state in ("idle", "attaching", "waiting_admission"):
            if state in states:
                return state
        return "detached"

    def free_for(self, client: AttachClient) -> bool:
        """Whether no other connection of this slot serves a request now."""
        return self._serving is None or self._serving is client

    def _give(self, client: AttachClient) -> None:
        self._serving = client
        for other in list(self.clients):
            if other is not client:
                other.withhold()

    def lost(self, client: AttachClient) -> None:
        """C{client}'s connection is gone, and with it its job or its bid."""
        if self._serving is client:
            self._serving = None
            self._free()

    def bid_received(self, client: AttachClient, taken: bool) -> None:
        """
        C{client}'s hub bid: after its attach, when a job came to its line
        while it was held, after a hold with jobs still waiting, or, if
        C{taken}, when it was told to take and had nothing left to send.
        """
        if taken and self._serving is client:
            self._serving = None
        if self._serving is not None or self.draining:
            if client.waited is None:
                client.answer(HOLD)
            # A bid for a job stands until the slot is free.
            return
        if not self._free():
            client.answer(OPEN)

    def job_done(self, client: AttachClient) -> None:
        """
        C{client}'s job is done: the slot goes to the oldest job any hub
        has bid for, the one C{client}'s hub said it had next included.
        That hub hears the verdict right after the response, so that, if
        it is the one, its next job comes as soon as a single hub's would.
        """
        self._serving = None
        if self.draining or client.detaching():
            self._free()
            return
        if client.bids:
            now = self._clock.seconds()
            mine = client.waited_now(now)
            best = self._oldest_bid(now)
            if best is None or (mine is not None and mine >= best.waited_now(now)):
                if mine is None and not self.lines.pending(client.hub):
                    client.verdict(OPEN)
                else:
                    # A hub another slot told to take very likely has more:
                    # told to take too, it bids "none" if it has not.
                    self.lines.taken(client.hub, now)
                    client.verdict(TAKE)
                    self._give(client)
                return
            client.verdict(HOLD)
        self._free()

    def _oldest_bid(self, now: float) -> AttachClient | None:
        # A standing bid counts with what is known of its hub's line now:
        # nothing, while a job it was told to send is on its way.
        bids = [
            (waited, c) for c in self.clients
            if c.offer is Offer.BID and c.attached and not c.detaching()
            and (waited := c.waited_now(now)) is not None
        ]
        return max(bids, key=lambda bid: bid[0], default=(None, None))[1]

    def _free(self) -> bool:
        """
        The slot is free: give it to the oldest job bid for, if any.

        :return: whether there was one.
        """
        if self.draining:
            return False
        now = self._clock.seconds()
        best = self._oldest_bid(now)
        if best is None:
            return False
        self.lines.taken(best.hub, now)
        best.answer(TAKE)
        self._give(best)
        return True

    def reconsider(self) -> None:
        """
        A hub was heard to have a job: if this slot is free, it goes to the
        oldest job bid for on it.
        """
        if self._serving is None:
            self._free()

    def app_call_started(self) -> None:
        """
        The app was called for a request on this slot.
        """
        self._app_calls += 1

    def app_call_ended(self) -> None:
        """
        An app call on this slot returned (its response may have gone
        nowhere, if the hub dropped the slot meanwhile).
        """
        self._app_calls -= 1
        if not self._app_calls:
            waiting, self._app_idle = self._app_idle, []
            for d in waiting:
                d.callback(None)

    def until_app_idle(self) -> Deferred[None]:
        """
        Fires when no app call runs for this slot.
        """
        if not self._app_calls:
            return succeed(None)
        idle: Deferred[None] = Deferred(lambda d: d in self._app_idle and self._app_idle.remove(d))
        self._app_idle.append(idle)
        return idle

    def retry_delay(self, attempt: int) -> float:
        """
        The slot's reconnect policy: L{retry_delay}, counting failed
        attaches in a row as failed attempts too.
        """
        return retry_delay(max(attempt, self.refusals + 1))

    def buildProtocol(self, addr) -> AttachClient | None:
        if self.draining:
            return None
        client = AttachClient(*self._args)
        client.factory = self
        return client

    def drain(self) -> Deferred[list]:
        """
        Stop reattaching, and drain every open connection.
        """
        self.draining = True
        return gatherResults([client.drain() for client in list(self.clients)])
