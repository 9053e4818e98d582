"""
What the hub's metrics cost (issue 18).

    python benchmarks/metrics.py [--quick] [--repeat N]

Two parts, each measured in this run:

1. The per-request bookkeeping, in this process: observing one value in
   pothead's L{pothead.metrics.Distribution} (a bisect into bucket counts)
   against C{prometheus_client}'s C{Histogram.observe} with the same
   buckets, and bumping a labelled count in a dict against
   C{Counter.labels(...).inc()}; then what the hub adds to each job (its
   counting when over, its Server-Timing value); nanoseconds per call,
   the median of interleaved rounds.  Against the hub's CPU per request
   in part 2's runs, the share of the hub's work the counting is.

2. The hub with and without ``--admin``, as bench.py measures pothead:
   sequential ``/tiny`` requests on a kept-alive connection (p50) and
   closed-loop ``/tiny`` throughput, each system started fresh per repeat,
   the two taking turns going first.  With ``--admin``, a scraper reads
   ``/metrics`` and ``/status.json`` every second while it is measured (a
   Prometheus scraping every 15 s, and a status page open, cost less).
   The counts are kept either way (they are plain integers on the
   reactor thread): this is the price of the admin port, its history and
   its scrapes.  The counts' own price is measured against the commit
   before them with ``benchmarks/run --baseline`` (benchmarks/README.md).

It prints the medians and the ratios: added p50 in milliseconds and in
percent, and the throughput ratio.  Every process is stopped by its PID.
"""

from __future__ import annotations

import random
import sys
import threading
import timeit
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

sys.path.insert(0, str(HERE))
import bench  # noqa: E402
import use_venv  # noqa: E402, F401  (re-executes with the venv's Python if need be)
from bench import HOST, Pothead, free_port, med  # noqa: E402


def bookkeeping(rounds: int, calls: int) -> dict[str, float]:
    """Nanoseconds per call of each way of counting, median of C{rounds}."""
    from collections import defaultdict

    from prometheus_client import CollectorRegistry, Counter, Histogram

    from pothead.metrics import BOUNDS, Distribution

    registry = CollectorRegistry()
    histogram = Histogram("h_seconds", "h", ["pool"], buckets=BOUNDS, registry=registry)
    child = histogram.labels("default")
    counter = Counter("c", "c", ["pool", "code", "source"], registry=registry)
    distribution = Distribution()
    counts: defaultdict = defaultdict(int)
    values = [random.lognormvariate(-5, 2) for _ in range(1024)]
    cases = {
        "Distribution.observe": lambda: [distribution.observe(v) for v in values],
        "prometheus Histogram.observe": lambda: [child.observe(v) for v in values],
        "dict count": lambda: [counts.__setitem__((200, "worker"), counts[200, "worker"] + 1)
                               for v in values],
        "prometheus Counter.labels().inc()": lambda: [
            counter.labels("default", "200", "worker").inc() for v in values],
    }
    cases.update(per_job())
    timings: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, case in cases.items():
            seconds = timeit.timeit(case, number=calls // len(values))
            timings[name].append(seconds / (calls // len(values) * len(values)) * 1e9)
    return {name: med(values) for name, values in timings.items()}


def per_job() -> dict:
    """
    What the hub adds to each job, as cases of 1024 calls: its counting
    when it is over (C{Job.finished}) and its C{Server-Timing}
    value (C{Job._timing}), on a job of the hub's own (a queued GET with a
    relayed response) made on a fake clock.
    """
    from twisted.internet.testing import MemoryReactorClock, StringTransport

    from pothead.hub.service import Hub

    clock = MemoryReactorClock()
    hub = Hub(clock)
    channel = hub.consumer_factory().buildProtocol(None)
    channel.makeConnection(StringTransport())
    channel.dataReceived(b"GET /tiny HTTP/1.1\r\nHost: bench\r\n\r\n")
    job = hub.pools["default"].get().result
    job.taken_at = clock.seconds()
    job.request.code, job.request.sent = 200, 2
    calls = range(1024)
    return {
        "Job.finished (per job)": lambda: [job.finished() for _ in calls],
        "Job._timing (per job)": lambda: [job._timing() for _ in calls],
    }


class Admin(Pothead):
    """pothead whose hub serves --admin, scraped every second while measured."""

    name = "admin"

    def hub_options(self) -> list[str]:
        self.admin = free_port()
        return ["--admin", f"tcp:{self.admin}:interface={HOST}"]

    def start(self) -> "Admin":
        super().start()
        self.scraper = Scraper(self.admin)
        self.scraper.start()
        return self

    def stop(self) -> None:
        scraper = getattr(self, "scraper", None)
        if scraper is not None:
            scraper.done.set()
            scraper.join(10)
        super().stop()
        if scraper is not None and not scraper.scrapes:
            raise RuntimeError("the admin port was never scraped while measured")


class Scraper(threading.Thread):
    """Read /metrics and /status.json every second until stopped."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.scrapes = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(1.0):
            for path in ("/metrics", "/status.json"):
                with urllib.request.urlopen(f"http://{HOST}:{self.port}{path}", timeout=5) as r:
                    r.read()
            self.scrapes += 1


def main() -> int:
    args, cfg, repeat, workroot = bench.quick_or_full(
        "the cost of the hub's metrics and --admin", "metrics")
    sys.path.insert(0, str(REPO))

    print("# per-call bookkeeping (ns per call, median of interleaved rounds)", flush=True)
    ns = bookkeeping(3 if args.quick else 7, 20_000 if args.quick else 200_000)
    for name, value in ns.items():
        print(f"  {name:36s} {value:8.0f} ns")
    print(f"  Histogram.observe / Distribution.observe: "
          f"{ns['prometheus Histogram.observe'] / ns['Distribution.observe']:.1f}x")

    results = bench.one_against_another(
        {"without": Pothead, "--admin": Admin}, cfg, repeat, workroot,
        "--admin (scraped every second) vs none")
    # The hub's CPU per request in this run, and the share of it the
    # per-job bookkeeping measured above takes: a figure the machine's
    # noise does not swamp, as it does the two systems' difference.
    hub_us = med([r["throughput"]["cpu_pct"]["hub"] / 100 / r["throughput"]["rps"] * 1e6
                  for r in results["without"]])
    job_us = (ns["Job.finished (per job)"] + ns["Job._timing (per job)"]) / 1000
    print(f"  the hub's CPU per /tiny request: {hub_us:.0f} us; counting a job and its "
          f"Server-Timing: {job_us:.2f} us ({job_us / hub_us * 100:.1f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
