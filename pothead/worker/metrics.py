"""
What a worker counts of its own work (L{WorkerMetrics}), and its admin
port (C{--admin ENDPOINT}): C{/metrics} and C{/healthz}
(L{pothead.admin_web}).

Counts are plain integers and histograms L{pothead.metrics.Distribution}s,
bumped on the reactor thread only: a job costs a few additions and one
bisection whether or not anyone scrapes.  The app runs in threads of its
own, so what it does is counted where the reactor hears of it: the end of
an app call reaches the reactor through L{pothead.worker.flow.BatchedCalls}
after the call's last write and finish, and whether the app raised is a
flag its thread sets before that hand-over (so the reactor reads it after).

A scrape runs on the reactor thread too (L{pothead.admin_web} writes
C{/metrics} there), so L{WorkerCollector} reads the counts as they stand
between two events, with no lock.  One job may still be seen counted
and not yet timed, its app call over and its time not yet observed:
off by one for that scrape.
"""

from __future__ import annotations

import time
from typing import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.registry import Collector
from twisted.web.server import Site

from pothead.admin_web import admin_site
from pothead.metrics import Distribution, counter, gauge, histogram

#: What a slot is doing (C{pothead_worker_slots}'s C{state}), every slot
#: in exactly one: C{busy}, the app (or the sidecar's upstream) serves a
#: job on it; C{idle}, attached to a hub (to several, with late binding)
#: and waiting for a job; C{attaching}, the attach request sent, the hub's
#: answer awaited; C{waiting_admission}, connected and waiting for the
#: worker's admission (C{--admission}, C{--poll-jobs}, a sidecar's
#: upstream down or unhealthy) before it attaches; C{detached}, none of
#: those: connecting, backing off after a failure, closing, or stopped.
SLOT_STATES = ("busy", "idle", "attaching", "waiting_admission", "detached")

#: The hub's refusals of an attach, by status, as
#: C{pothead_worker_attach_failures_total}'s C{reason} names them (the
#: hub's own C{pothead_attach_failures_total} uses the same words).
REFUSALS = {
    b"400": "bad_request",
    b"401": "unauthorized",
    b"404": "unknown_pool",
    b"426": "upgrade_required",
    b"503": "slots_full",
}

#: Why an attach failed (C{pothead_worker_attach_failures_total}'s
#: C{reason}): a refusal above; C{refused_other}, any other status but a
#: switch to ptth; C{bad_answer}, an answer that is not HTTP, or a 101
#: without ptth; C{timeout}, no answer within C{--attach-timeout};
#: C{lost}, the connection ended while attaching (closed, reset, a TLS
#: failure); and, before any attach, C{connect_refused}, C{connect_timeout},
#: C{dns} (the hub's name did not resolve) and C{connect_failed}
#: (any other failure to connect).
ATTACH_FAILURES = (
    *REFUSALS.values(), "refused_other", "bad_answer", "timeout", "lost",
    "connect_refused", "connect_timeout", "dns", "connect_failed",
)


def refusal(code: bytes) -> str:
    """The reason an attach answered with status C{code} failed."""
    if code == b"101":
        return "bad_answer"
    return REFUSALS.get(code, "refused_other")


class WorkerMetrics:
    """
    The counts and distributions of one worker process, kept on the
    reactor thread.

    :ivar jobs: jobs the app was called for (a sidecar: relayed to the
        upstream), by the status code of the response begun, or L{None}
        if none was (the hub's connection was gone first).
    :ivar app_errors: jobs whose app call raised (answered 500 before the
        response began, else the response cut off); a sidecar's: jobs
        whose upstream failed (answered 502, or the response cut off).
    :ivar app_time: seconds from handing a job to the app until the app
        call was over, its response all written (a sidecar: until the
        upstream's response was all relayed).
    :ivar attach_failures: attempts to attach that failed, by reason
        (L{ATTACH_FAILURES}).
    :ivar admission_waits: admissions that were not granted at once.
    :ivar admission_wait: seconds from a connected slot asking for its
        admission until it had it, for every admission.
    :ivar now: the clock durations are read from (monotonic: a duration
        must not jump with the wall clock).
    """

    __slots__ = (
        "jobs", "app_errors", "app_time", "attach_failures", "admission_waits",
        "admission_wait", "now",
    )

    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        self.jobs: dict[int | None, int] = {}
        self.app_errors = 0
        self.app_time = Distribution()
        self.attach_failures: dict[str, int] = {}
        self.admission_waits = 0
        self.admission_wait = Distribution()
        self.now = now

    def job_done(self, code: int | None, began: float, failed: bool) -> None:
        """
        An app call that began at C{began} (by L{now}) is over.

        :param code: the status of the response it began, or L{None}.
        :param failed: whether the app raised, or the upstream failed.
        """
        self.jobs[code] = self.jobs.get(code, 0) + 1
        self.app_time.observe(self.now() - began)
        if failed:
            self.app_errors += 1

    def attach_failed(self, reason: str) -> None:
        """An attempt to attach failed, for C{reason} (L{ATTACH_FAILURES})."""
        self.attach_failures[reason] = self.attach_failures.get(reason, 0) + 1

    def admitted(self, asked: float, at_once: bool) -> None:
        """
        A slot that asked for its admission at C{asked} has it.

        :param at_once: whether it was granted as it was asked.
        """
        self.admission_wait.observe(self.now() - asked)
        if not at_once:
            self.admission_waits += 1


class WorkerCollector(Collector):
    """
    A Prometheus collector of one worker's slots and counts.

    :param metrics: the worker's counts.
    :param slots: returns the worker's slots (each with a C{state}, one of
        L{SLOT_STATES}).
    :param pool: the pool the worker joins: every series' C{pool} label.
    """

    def __init__(self, metrics: WorkerMetrics, slots: Callable[[], Sequence], pool: str) -> None:
        self._metrics = metrics
        self._slots = slots
        self._pool = pool

    def collect(self) -> Iterator:
        now = self._metrics
        pool = self._pool
        states = dict.fromkeys(SLOT_STATES, 0)
        for slot in self._slots():
            states[slot.state] += 1
        yield gauge(
            "pothead_worker_slots", "This worker's slots, by what each is doing.",
            ["pool", "state"], (([pool, state], count) for state, count in states.items()))
        yield counter(
            "pothead_worker_jobs",
            "Jobs the app was called for (a sidecar: relayed to its upstream), by the "
            "status code of the response begun ('none': none was, the hub was gone).",
            ["pool", "code"],
            (([pool, "none" if code is None else str(code)], count) for code, count in sorted(
                now.jobs.items(), key=lambda item: -1 if item[0] is None else item[0])))
        yield counter(
            "pothead_worker_app_errors",
            "Jobs whose app call raised (a sidecar: whose upstream failed): answered "
            "500 (502) if the response had not begun, else cut off.",
            ["pool"], [([pool], now.app_errors)])
        yield histogram(
            "pothead_worker_app_seconds",
            "Time from handing a job to the app (a sidecar: to the upstream) until its "
            "response was all written.",
            ["pool"], [([pool], now.app_time)])
        yield counter(
            "pothead_worker_attach_failures",
            "Attempts to attach to a hub that failed, by reason.",
            ["pool", "reason"],
            (([pool, reason], count) for reason, count in sorted(now.attach_failures.items())))
        yield counter(
            "pothead_worker_admission_waits",
            "Slot admissions that were not granted at once (the gate was closed).",
            ["pool"], [([pool], now.admission_waits)])
        yield histogram(
            "pothead_worker_admission_wait_seconds",
            "Time a connected slot waited for its admission before attaching.",
            ["pool"], [([pool], now.admission_wait)])


def worker_admin_site(metrics: WorkerMetrics, slots: Callable[[], Sequence], pool: str) -> Site:
    """
    The worker's admin site: C{/metrics} of L{WorkerCollector}, C{/healthz}.
    """
    registry = CollectorRegistry()
    registry.register(WorkerCollector(metrics, slots, pool))
    return admin_site(registry, {})
