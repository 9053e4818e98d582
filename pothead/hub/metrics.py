"""
What the hub counts of its own work: per pool (L{PoolMetrics}, kept by
each L{pothead.hub.pool.Pool}) and for the hub as a whole (L{HubMetrics}),
shown by the admin port (L{pothead.hub.admin}).

Every count is a plain integer and every histogram a
L{pothead.metrics.Distribution}, bumped on the reactor thread: a job costs
a few additions and three bisections, whether or not anyone scrapes.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Protocol

from pothead.metrics import Distribution

#: Why a job went back to the queue (C{pothead_requeues_total}'s C{reason}).
#: C{requeue_signal}: the worker answered "not processed" (its app or
#: admission refused it); C{drain}: the worker is draining (its detach
#: notice answered the job); C{withdrawn}: another hub's job took the slot
#: (late binding); C{lost_worker}: the worker's connection ended before
#: any response byte, and the job was sent again (C{--retries}).
REQUEUE_REASONS = ("requeue_signal", "drain", "withdrawn", "lost_worker")

#: Why the hub answered a job itself, or cut its consumer off
#: (C{pothead_refusals_total}'s C{reason}; docs/operations.md's failure table).
REFUSAL_REASONS = (
    "queue_full", "queue_timeout", "requeue_limit", "request_timeout",
    "worker_failed", "stalled", "broke_off",
)

#: How many queue waits one interval of the status page's history keeps:
#: enough for its percentiles, bounded whatever the load.
RECENT_WAITS = 10_000


class FinishedJob(Protocol):
    """
    What a pool's metrics read of a job that is over (L{pothead.hub.job.Job}).
    """

    #: Whether it joined the queue; how long it waited for the slot that
    #: answered it, and how long that slot's worker took (L{None}: no
    #: slot took it).
    waited: bool
    queue_seconds: float
    worker_seconds: float | None

    #: C{"worker"} or C{"hub"}: who answered it.
    answered_by: str

    #: The status its consumer was answered with, and body bytes sent.
    code: int
    sent: int

    #: Its request body's size, if it had one.
    body_length: int | None


class PoolMetrics:
    """
    The counts and distributions of one pool.

    :ivar queue_wait: seconds from a job's arrival until a worker took it
        for the last time (or until the hub answered it, if none did);
        jobs refused at once, the queue being full, never waited.
    :ivar worker_time: seconds from the worker taking the job until its
        response was all read (or the hub answered in its stead).
    :ivar total_time: seconds from arrival until the consumer had the
        whole answer.
    :ivar responses: answered jobs by C{(status code, source)}, the source
        being C{"worker"} or C{"hub"}.
    :ivar refusals: jobs the hub answered or cut off, by reason
        (L{REFUSAL_REASONS}).
    :ivar requeues: jobs put back in the queue, by reason (L{REQUEUE_REASONS}).
    :ivar retries: jobs sent to a worker again after a first worker took them.
    :ivar left: consumers gone before their answer, by stage (C{"queued"},
        C{"served"}).
    :ivar received_bytes: request body bytes received from consumers.
    :ivar sent_bytes: response body bytes sent to consumers.
    :ivar queued_peak: the most jobs waiting at once since the status
        history last looked.
    :ivar recent_waits: queue waits since the status history last looked,
        or L{None} while no history is kept.
    """

    __slots__ = (
        "queue_wait", "worker_time", "total_time", "responses", "refusals", "requeues",
        "retries", "left", "received_bytes", "sent_bytes", "queued_peak", "recent_waits",
    )

    def __init__(self) -> None:
        self.queue_wait = Distribution()
        self.worker_time = Distribution()
        self.total_time = Distribution()
        self.responses: defaultdict[tuple[int, str], int] = defaultdict(int)
        self.refusals: defaultdict[str, int] = defaultdict(int)
        self.requeues: defaultdict[str, int] = defaultdict(int)
        self.retries = 0
        self.left: defaultdict[str, int] = defaultdict(int)
        self.received_bytes = 0
        self.sent_bytes = 0
        self.queued_peak = 0
        self.recent_waits: list[float] | None = None

    def finished(self, job: FinishedJob, total: float) -> None:
        """
        C{job}'s consumer has its whole answer, C{total} seconds after it
        arrived.
        """
        if job.waited:
            self.queue_wait.observe(job.queue_seconds)
            recent = self.recent_waits
            if recent is not None and len(recent) < RECENT_WAITS:
                recent.append(job.queue_seconds)
        if job.worker_seconds is not None:
            self.worker_time.observe(job.worker_seconds)
        self.total_time.observe(total)
        code = job.code
        # A worker may answer any three-digit status: those HTTP does not
        # define are counted together, so the label stays bounded.
        self.responses[code if 100 <= code < 600 else 0, job.answered_by] += 1
        self.received_bytes += job.body_length or 0
        self.sent_bytes += job.sent


class HubMetrics:
    """
    The counts that belong to no pool.

    :ivar attach_failures: worker-port connections that did not become a
        slot, by reason (C{bad_request}, C{unauthorized}, C{unknown_pool},
        C{upgrade_required}, C{slots_full}, C{timeout}, C{quiet},
        C{head_too_large}).
    :ivar rejected: consumer requests refused at the front door, before
        any pool (malformed, too large, too slow...), by status code.
    """

    __slots__ = ("attach_failures", "rejected")

    def __init__(self) -> None:
        self.attach_failures: defaultdict[str, int] = defaultdict(int)
        self.rejected: defaultdict[int, int] = defaultdict(int)
