"""
Soak: 10,000 requests queued at once behind one slow worker slot.

It starts a real hub and worker (``twistd``), opens N consumer
connections each with one request, and reports:

- the hub's RSS growth per queued job (bodies are empty);
- how responsive the hub stays with the queue full: the latency of probe
  requests the hub answers itself (a request line over the limit, 414),
  sent while the jobs wait;
- how long the worker takes to work through the queue, and how many
  requests failed (every one must get its 200).

Usage: python benchmarks/soak.py [--jobs 10000] [--work-ms 1] [--python PY]
Everything runs on 127.0.0.1 and is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
HOST = "127.0.0.1"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def start(python: str, log: Path, *argv: str) -> subprocess.Popen:
    twistd = str(Path(python).parent / "twistd")
    return subprocess.Popen(
        [twistd, "-n", "--pidfile=", "-l", str(log), *argv],
        cwd=log.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(HERE.parent)},
    )


def wait_line(log: Path, pattern: str, timeout: float = 20) -> re.Match:
    deadline = time.monotonic() + timeout
    regex = re.compile(pattern)
    while time.monotonic() < deadline:
        match = regex.search(log.read_text()) if log.exists() else None
        if match:
            return match
        time.sleep(0.05)
    raise RuntimeError(f"{pattern!r} not seen in {log}")


async def one_request(port: int, path: str, timeout: float) -> tuple[int, float]:
    """
    Send one GET on a fresh connection; return its status and latency.
    """
    started = time.monotonic()
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout)
        await asyncio.wait_for(reader.read(), timeout)
        return int(head.split()[1]), time.monotonic() - started
    finally:
        writer.close()


async def soak(port: int, hub_pid: int, jobs: int, work_ms: float) -> dict:
    baseline = rss_kib(hub_pid)
    timeout = jobs * work_ms / 1000 * 3 + 60
    started = time.monotonic()
    tasks = []
    for i in range(jobs):
        tasks.append(asyncio.create_task(one_request(port, f"/sleep?ms={work_ms}&i={i}", timeout)))
        if i % 500 == 499:
            await asyncio.sleep(0)
    # Let the connections land and queue, then measure.
    await asyncio.sleep(2.0)
    peak = rss_kib(hub_pid)
    probes = []
    for _ in range(20):
        status, latency = await one_request(port, "/" + "x" * 70_000, 10)
        assert status == 414, status
        probes.append(latency)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    elapsed = time.monotonic() - started
    failed = [r for r in results if isinstance(r, Exception) or r[0] != 200]
    return {
        "jobs": jobs,
        "work_ms": work_ms,
        "rss_baseline_kib": baseline,
        "rss_queued_kib": peak,
        "kib_per_queued_job": (peak - baseline) / jobs,
        "probe_p50_ms": statistics.median(probes) * 1000,
        "probe_max_ms": max(probes) * 1000,
        "drain_seconds": elapsed,
        "failed": len(failed),
        "failures_sample": [repr(f) for f in failed[:5]],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--work-ms", type=float, default=1.0)
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.jobs + 200 > hard:
        print(f"fd limit {hard} too low for {args.jobs} jobs", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as work:
        hub_log, worker_log = Path(work) / "hub.log", Path(work) / "worker.log"
        hub = start(
            args.python, hub_log, "pothead-hub",
            "--consumer", f"tcp:0:interface={HOST}:backlog=4096",
            "--worker", f"tcp:0:interface={HOST}",
            "--max-queue", str(args.jobs * 2), "--queue-timeout", "3600",
            "--request-timeout", "3600",
        )
        worker = None
        try:
            port = int(wait_line(hub_log, r"ConsumerFactory starting on (\d+)").group(1))
            worker_port = int(wait_line(hub_log, r"WorkerPortFactory starting on (\d+)").group(1))
            worker = start(
                args.python, worker_log, "pothead-worker", "--app", "app:app",
                "--app-dir", str(HERE), "--hub", f"tcp:{HOST}:{worker_port}", "--slots", "1",
            )
            wait_line(hub_log, r"attached to pool default")
            report = asyncio.run(soak(port, hub.pid, args.jobs, args.work_ms))
        finally:
            for process in (worker, hub):
                if process is not None:
                    process.kill()
                    process.wait(10)
    print(json.dumps(report, indent=2))
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
