"""
One hub for three services (issue 19): pools routed by path, against one
pool that every worker serves.

    python benchmarks/pools.py [--quick] [--repeat N] [--seconds S]

Three services share one hub, each with a worker of 2 slots serving the
benchmark app (``/sleep``: work that costs no CPU, so 6 slots run on 2
cores without contention):

- ``thumbs``: 10 ms jobs, Poisson arrivals at half its slots' capacity;
- ``models``: 60 ms jobs, Poisson arrivals at 60 % of its capacity;
- ``transcode``: 1 s jobs in bursts: 8 at once every 4 s (a queue of
  seconds for its 2 slots, then idle).

Two systems get the same seeded arrivals, the two taking turns going
first: ``pools`` (``--pool thumbs:prefix=/thumbs:strip`` ..., each worker
with ``--pool NAME``), and ``one pool`` (the same three workers, all in
``default``, every request in one FIFO line).  For each service it prints
the p50 and p99 latency (from scheduled send to last byte, open loop: the
client never queues) and the failures; the medians over repeats, and the
ratio of one pool's p99 to the pools'.  Every process is stopped by its PID.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

sys.path.insert(0, str(HERE))
import bench  # noqa: E402
import use_venv  # noqa: E402, F401  (re-executes with the venv's Python if need be)
from bench import HOST, System, free_port, med, pct, probe, run_loadgen, twistd_command, wait_port  # noqa: E402

#: service: (job milliseconds, slots)
SERVICES = {"thumbs": (10, 2), "models": (60, 2), "transcode": (1000, 2)}


def schedule(seed: int, seconds: float) -> list[tuple[float, str, str]]:
    """Seeded arrivals: (time, service, path) sorted by time."""
    rng = random.Random(seed)
    arrivals = []
    for service, utilisation in (("thumbs", 0.5), ("models", 0.6)):
        ms, slots = SERVICES[service]
        rate = utilisation * slots / (ms / 1000)
        t = rng.expovariate(rate)
        while t < seconds:
            arrivals.append((t, service, f"/{service}/sleep?ms={ms}"))
            t += rng.expovariate(rate)
    burst = 0.5
    while burst < seconds:
        for _ in range(8):
            arrivals.append((burst, "transcode", f"/transcode/sleep?ms={SERVICES['transcode'][0]}"))
        burst += 4.0
    return sorted(arrivals)


class Hub(System):
    """A hub and one worker per service: in pools of their own, or all in one."""

    def __init__(self, workdir: Path, pooled: bool) -> None:
        super().__init__(workdir, sum(slots for _, slots in SERVICES.values()))
        self.pooled = pooled
        self.name = "pools" if pooled else "one-pool"

    def start(self) -> "Hub":
        self.front = free_port()
        wport = free_port()
        twistd = twistd_command()
        pools = [arg for service in SERVICES
                 for arg in ("--pool", f"{service}:prefix=/{service}:strip")] if self.pooled else []
        hub = self._spawn(f"{self.name}-hub", twistd + [
            "-n", "--pidfile=", "-l", "-", "pothead-hub",
            "--consumer", f"tcp:{self.front}:interface={HOST}",
            "--worker", f"tcp:{wport}:interface={HOST}",
            "--access-log", "none", "--max-queue", "10000", *pools,
        ], cwd=REPO)
        wait_port(wport, 30, hub)
        wait_port(self.front, 30, hub)
        for service, (_, slots) in SERVICES.items():
            self._spawn(f"{self.name}-{service}", twistd + [
                "-n", "--pidfile=", "-l", "-", "pothead-worker", "--app", "app:app",
                "--app-dir", str(HERE), "--hub", f"tcp:{HOST}:{wport}", "--slots", str(slots),
                "--pool", service if self.pooled else "default",
            ], cwd=REPO)
        deadline = time.monotonic() + 30
        while hub.log_text().count("attached to pool") < self.slots:
            if time.monotonic() > deadline or not hub.alive():
                raise RuntimeError(f"slots did not attach:\n{hub.log_text()[-2000:]}")
            time.sleep(0.05)
        probe(self.front, "/thumbs/tiny" if self.pooled else "/tiny")
        return self


def measure(pooled: bool, workdir: Path, seed: int, seconds: float) -> dict:
    system = Hub(workdir, pooled)
    try:
        system.start()
        arrivals = schedule(seed, seconds)
        out = run_loadgen("open", {
            # One pool: the same requests, but for the service's prefix,
            # which only the pools strip.
            "port": system.front,
            "schedule": [[t, path if pooled else "/" + path.split("/", 2)[2]]
                         for t, _, path in arrivals],
            "timeout": 60.0, "deadline": seconds + 60.0,
        }, timeout=seconds + 120)
        result = {}
        for service in SERVICES:
            mine = [i for i, (_, name, _) in enumerate(arrivals) if name == service]
            latency = [out["latency"][i] for i in mine]
            result[service] = {
                "n": len(mine),
                "failed": sum(1 for i in mine if out["status"][i] != 200),
                "p50_ms": pct(latency, 50) * 1000, "p99_ms": pct(latency, 99) * 1000,
            }
        return result
    finally:
        system.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description="three pools against one, mixed load")
    parser.add_argument("--quick", action="store_true", help="smoke pass: 6 s, 1 repeat")
    parser.add_argument("--repeat", type=int, default=None, help="repeats (default 3)")
    parser.add_argument("--seconds", type=float, default=None, help="load per run (default 20)")
    args = parser.parse_args()
    repeat = args.repeat or (1 if args.quick else 3)
    seconds = args.seconds or (6.0 if args.quick else 20.0)
    workroot = bench.standalone_run("pools")
    started = time.monotonic()
    # The same seeded arrivals for both systems in a repeat, new ones in
    # the next: the seed is the repeat's number, counted here.
    repeats = {name: iter(range(repeat)) for name in ("pools", "one-pool")}
    results = bench.take_turns(
        {name: lambda workdir, name=name: measure(
            name == "pools", workdir, seed=next(repeats[name]), seconds=seconds)
         for name in repeats},
        repeat, workroot,
        lambda res: "  ".join(
            f"{s} p50 {r['p50_ms']:.0f} p99 {r['p99_ms']:.0f} ms ({r['n']}, failed {r['failed']})"
            for s, r in res.items()))
    print()
    print(f"three services, {seconds:g} s of mixed load, median of {repeat} "
          f"({time.monotonic() - started:.0f} s, {bench.machine()['cpus']} CPUs):")
    for service, (ms, slots) in SERVICES.items():
        line = [f"  {service:9s} ({ms} ms jobs, {slots} slots):"]
        p99 = {}
        for name, runs in results.items():
            p50 = med([r[service]["p50_ms"] for r in runs])
            p99[name] = med([r[service]["p99_ms"] for r in runs])
            failed = sum(r[service]["failed"] for r in runs)
            line.append(f"{name} p50 {p50:.0f} ms p99 {p99[name]:.0f} ms (failed {failed});")
        line.append(f"one pool's p99 / pools' {p99['one-pool'] / p99['pools']:.1f}")
        print(" ".join(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
