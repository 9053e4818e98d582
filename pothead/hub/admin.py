"""
The hub's admin port (C{--admin ENDPOINT}): a small twisted.web site that
shows the queue, read from the hub's own state when asked.

  - C{/metrics}: Prometheus text format, through C{prometheus_client}'s
    own Twisted resource and a collector that reads each pool at scrape
    time (so serving requests costs nothing for it);
  - C{/status.json}: the live state: pools, their queue and slots (each
    with its worker's name, peer, state and current job), the limits;
  - C{/healthz}: the process serves; C{/readyz}: at least one slot is
    attached.

It is off by default, and meant for loopback or a private interface: it
names every worker and shows every job's path.
"""

from __future__ import annotations

import json
from typing import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.twisted import MetricsResource
from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import Site

from pothead.address import host_port
from pothead.hub.pool import Pool
from pothead.hub.service import Hub


class PoolCollector:
    """
    A Prometheus collector of every pool's queue and slots, read when
    scraped.
    """

    def __init__(self, hub: Hub) -> None:
        self._hub = hub

    def collect(self) -> Iterator[GaugeMetricFamily]:
        queued = GaugeMetricFamily(
            "pothead_queue_jobs", "Jobs waiting in the pool's queue.", labels=["pool"])
        oldest = GaugeMetricFamily(
            "pothead_queue_oldest_age_seconds",
            "How long the job at the head of the pool's queue has waited (0 when none waits).",
            labels=["pool"])
        slots = GaugeMetricFamily(
            "pothead_slots", "Worker slots attached to the pool, by state.",
            labels=["pool", "state"])
        for name, pool in self._hub.pools.items():
            queued.add_metric([name], pool.queued)
            oldest.add_metric([name], pool.head_waited() or 0.0)
            busy = sum(1 for slot in pool.slots if slot.job is not None)
            slots.add_metric([name, "attached"], len(pool.slots))
            slots.add_metric([name, "idle"], pool.idle)
            slots.add_metric([name, "busy"], busy)
        yield queued
        yield oldest
        yield slots


def pool_status(pool: Pool, now: float) -> dict:
    """What C{/status.json} says of one pool."""
    slots = []
    for slot in sorted(pool.slots, key=lambda slot: slot.worker):
        job = slot.job
        entry = {
            "worker": slot.worker,
            "peer": host_port(slot.transport.getPeer()) if slot.transport else None,
            "state": "busy" if job is not None else "waiting",
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
    return {
        "queued": pool.queued,
        "oldest_age_seconds": round(waited, 3) if waited is not None else None,
        "idle": pool.idle,
        "slots": slots,
    }


class _Text(Resource):
    isLeaf = True

    def __init__(self, answer) -> None:
        super().__init__()
        self._answer = answer

    def render_GET(self, request) -> bytes:
        code, content_type, body = self._answer()
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", content_type)
        request.setHeader(b"Cache-Control", b"no-store")
        return body


def admin_site(hub: Hub, clock: IReactorTime) -> Site:
    """
    The admin port's site for C{hub}.
    """
    registry = CollectorRegistry()
    registry.register(PoolCollector(hub))

    def status() -> tuple[int, bytes, bytes]:
        now = clock.seconds()
        limits = hub.limits
        document = {
            "pools": {name: pool_status(pool, now) for name, pool in hub.pools.items()},
            "limits": {
                "max_queue": limits.max_queue,
                "queue_timeout_seconds": limits.queue_timeout,
                "request_timeout_seconds": limits.request_timeout,
                "max_connections": limits.connections,
                "max_slots": limits.max_slots,
            },
        }
        return 200, b"application/json", json.dumps(document, indent=1).encode() + b"\n"

    def ready() -> tuple[int, bytes, bytes]:
        attached = sum(len(pool.slots) for pool in hub.pools.values())
        if attached:
            return 200, b"text/plain; charset=utf-8", b"ready: %d slots attached\n" % attached
        return 503, b"text/plain; charset=utf-8", b"not ready: no slot attached\n"

    root = Resource()
    root.putChild(b"metrics", MetricsResource(registry=registry))
    root.putChild(b"status.json", _Text(status))
    root.putChild(b"healthz", _Text(lambda: (200, b"text/plain; charset=utf-8", b"ok\n")))
    root.putChild(b"readyz", _Text(ready))
    site = Site(root)
    site.noisy = False
    # A scrape every few seconds is not news for the log.
    site.log = lambda request: None
    return site
