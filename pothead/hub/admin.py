"""
The hub's admin port (C{--admin ENDPOINT}): a small twisted.web site that
shows the queue, read from the hub's own state when asked.

  - C{/metrics}: Prometheus text format, written by C{prometheus_client}
    from a collector that turns each pool's counts
    (L{pothead.hub.metrics}) into metric families when scraped;
  - C{/status.json}: the live state: pools, their queue, the last fifteen
    minutes of it (L{pothead.hub.history}), and their slots (each with its
    worker's name, peer, state, jobs served and current job); the limits;
  - C{/}: a status page drawing C{/status.json}, refreshed every few seconds;
  - C{/healthz}: the process serves; C{/readyz}: at least one slot is
    attached.

It is off by default, and meant for loopback or a private interface: it
names every worker and shows every job's path.
"""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.registry import Collector
from twisted.application.service import MultiService
from twisted.application.strports import service as listening
from twisted.internet.interfaces import IReactorTime

from pothead.address import host_port
from pothead.admin_web import TEXT, Answer, Page, admin_site
from pothead.hub.history import History
from pothead.hub.pool import Pool
from pothead.hub.pool_group import PoolGroup
from pothead.hub.service import Hub
from pothead.hub.tally import Tally
from pothead.metrics import counter, gauge, histogram

#: The status page, served as it is: HTML with its script and style inline.
STATUS_PAGE = files("pothead.hub").joinpath("status_page.html").read_bytes()


class HubCollector(Collector):
    """
    A Prometheus collector of the hub's pools and counts, read when scraped.
    """

    def __init__(self, hub: Hub, out_of_descriptors: Tally | None = None) -> None:
        """
        :param out_of_descriptors: counts connections answered 503 from the
            descriptor reserve, if the hub has one.
        """
        self._hub = hub
        self._out_of_descriptors = out_of_descriptors

    def collect(self) -> Iterator:
        pools = self._hub.pools
        metrics = {name: pool.metrics for name, pool in pools.items()}
        yield gauge(
            "pothead_queue_jobs", "Jobs waiting in the pool's queue.", ["pool"],
            (([name], pool.queued) for name, pool in pools.items()))
        yield gauge(
            "pothead_queue_oldest_age_seconds",
            "How long the job at the head of the pool's queue has waited (0 when none waits).",
            ["pool"], (([name], pool.head_waited() or 0.0) for name, pool in pools.items()))
        yield gauge(
            "pothead_slots", "Worker slots attached to the pool, by state.", ["pool", "state"],
            (series for name, pool in pools.items() for series in _slot_series(name, pool)))
        yield histogram(
            "pothead_queue_wait_seconds",
            "Time from a job's arrival until the worker that answered it took it "
            "(until the hub answered, if none did).",
            ["pool"], (([name], m.queue_wait) for name, m in metrics.items()))
        yield histogram(
            "pothead_serve_seconds",
            "Time from a worker taking a job until its response was all read.",
            ["pool"], (([name], m.worker_time) for name, m in metrics.items()))
        yield histogram(
            "pothead_request_seconds",
            "Time from a job's arrival until its consumer had the whole answer.",
            ["pool"], (([name], m.total_time) for name, m in metrics.items()))
        yield counter(
            "pothead_responses", "Jobs answered, by status code and by who answered.",
            ["pool", "code", "source"],
            (([name, str(code) if code else "other", source], count)
             for name, m in metrics.items()
             for (code, source), count in sorted(m.responses.items())))
        yield counter(
            "pothead_refusals",
            "Jobs the hub answered itself or cut off, by reason (docs/operations.md).",
            ["pool", "reason"],
            (([name, reason], count) for name, m in metrics.items()
             for reason, count in sorted(m.refusals.items())))
        yield counter(
            "pothead_requeues", "Jobs put back at the head of the queue, by reason.",
            ["pool", "reason"],
            (([name, reason], count) for name, m in metrics.items()
             for reason, count in sorted(m.requeues.items())))
        yield counter(
            "pothead_retries", "Jobs sent to a worker again after a first worker took them.",
            ["pool"], (([name], m.retries) for name, m in metrics.items()))
        yield counter(
            "pothead_consumers_left",
            "Consumers that closed their connection before their answer, by stage.",
            ["pool", "stage"],
            (([name, stage], count) for name, m in metrics.items()
             for stage, count in sorted(m.left.items())))
        yield counter(
            "pothead_received_bytes", "Request body bytes received from consumers.",
            ["pool"], (([name], m.received_bytes) for name, m in metrics.items()))
        yield counter(
            "pothead_sent_bytes", "Response body bytes sent to consumers.",
            ["pool"], (([name], m.sent_bytes) for name, m in metrics.items()))
        hub = self._hub.metrics
        yield counter(
            "pothead_rejected_requests",
            "Consumer requests refused before reaching a pool (malformed, too large, "
            "too slow), by status code.",
            ["code"], (([str(code)], count) for code, count in sorted(hub.rejected.items())))
        yield counter(
            "pothead_attach_failures",
            "Worker-port connections that did not become a slot, by reason.",
            ["reason"],
            (([reason], count) for reason, count in sorted(hub.attach_failures.items())))
        if self._out_of_descriptors is not None:
            yield counter(
                "pothead_out_of_descriptors",
                "New connections answered 503 from the descriptor reserve.",
                [], [([], self._out_of_descriptors.total)])


def _slot_series(name: str, pool: Pool) -> Iterator[tuple[list[str], int]]:
    busy = sum(1 for slot in pool.slots if slot.job is not None and slot.job.pool is pool)
    yield [name, "attached"], len(pool.slots)
    yield [name, "idle"], pool.idle
    yield [name, "busy"], busy


def pool_names(pool: Pool | PoolGroup) -> list[str]:
    """The pools a slot serves, by name."""
    return [member.name for member in getattr(pool, "pools", [pool])]


def pool_status(pool: Pool, now: float) -> dict:
    """What C{/status.json} says of one pool, but its history."""
    slots = []
    for slot in sorted(pool.slots, key=lambda slot: slot.worker):
        job, state = slot.job, slot.state
        if job is not None and job.pool is not pool:
            # A slot serving several pools, busy with another's job.
            job, state = None, "elsewhere"
        entry = {
            "worker": slot.worker,
            "peer": host_port(slot.transport.getPeer()) if slot.transport else None,
            "state": state,
            "hubs": slot.offered_to,
            "pools": pool_names(slot.pool),
            "jobs_served": slot.served,
            "job": None,
        }
        if job is not None:
            entry["job"] = {
                "method": job.request.head.method.decode("latin-1"),
                "path": job.request.head.target.decode("latin-1"),
                "age_seconds": round(now - job.queued_at, 3),
            }
        slots.append(entry)
    waited = pool.head_waited()
    limits = pool.limits
    return {
        "queued": pool.queued,
        "oldest_age_seconds": round(waited, 3) if waited is not None else None,
        "idle": pool.idle,
        "slots": slots,
        # The pool's own: the hub's, but for those its --pool sets.
        "limits": {
            "max_queue": limits.max_queue,
            "queue_timeout_seconds": limits.queue_timeout,
            "request_timeout_seconds": limits.request_timeout,
        },
    }


def admin_service(
    hub: Hub, clock: IReactorTime, endpoint: str, out_of_descriptors: Tally | None = None
) -> MultiService:
    """
    The admin port for C{hub} on C{endpoint}, with the history it shows.

    :param out_of_descriptors: counts connections answered 503 from the
        descriptor reserve, if the hub has one.
    """
    service = MultiService()
    history = History(hub.pools, clock)
    history.setServiceParent(service)
    listening(endpoint, hub_admin_site(hub, clock, history, out_of_descriptors)).setServiceParent(
        service)
    return service


def hub_admin_site(
    hub: Hub, clock: IReactorTime, history: History, out_of_descriptors: Tally | None = None
):
    """
    The admin port's site for C{hub}.
    """
    registry = CollectorRegistry()
    registry.register(HubCollector(hub, out_of_descriptors))

    def status() -> Answer:
        now = clock.seconds()
        limits = hub.limits
        pools = {}
        for name, pool in hub.pools.items():
            pools[name] = pool_status(pool, now)
            pools[name]["history"] = history.of(name)
        document = {
            "time": round(now, 3),
            "pools": pools,
            "limits": {
                "max_queue": limits.max_queue,
                "queue_timeout_seconds": limits.queue_timeout,
                "request_timeout_seconds": limits.request_timeout,
                "max_connections": limits.connections,
                "max_slots": limits.max_slots,
            },
        }
        return 200, b"application/json", json.dumps(document, indent=1).encode() + b"\n"

    def ready() -> Answer:
        attached = sum(len(pool.slots) for pool in hub.pools.values())
        if attached:
            return 200, TEXT, b"ready: %d slots attached\n" % attached
        return 503, TEXT, b"not ready: no slot attached\n"

    return admin_site(registry, {
        b"": Page(lambda: (200, b"text/html; charset=utf-8", STATUS_PAGE)),
        b"status.json": Page(status),
        b"readyz": Page(ready),
    })
