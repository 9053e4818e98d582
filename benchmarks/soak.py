"""
Soak: 10,000 concurrent consumers queued at once behind one slow worker slot.

It starts a real hub and worker (``twistd``), the hub as a service
manager would, with a soft descriptor limit of 1024 (``--nofile``) and
no tuning: it must raise its own.  It opens N consumer connections at
once, each with one request, and reports:

- the hub's RSS growth per queued job (bodies are empty);
- how responsive the hub stays with the queue full: the latency of probe
  requests the hub answers itself (a request line over the limit, 414),
  sent while the jobs wait;
- how long the worker takes to work through the queue, and what every
  consumer got: with ``--max-queue`` at N (the default) every one must
  get its 200; below N the rest must get 503, and none a reset or a
  close without an answer;
- the hub's descriptor line and how many lines it logged.

Usage: python benchmarks/soak.py [--jobs 10000] [--work-ms 1] [--max-queue N]
       [--nofile 1024] [--nofile-hard N] [--python PY]
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
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
HOST = "127.0.0.1"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def start(python: str, log: Path, *argv: str,
          nofile: tuple[int, int] | None = None) -> subprocess.Popen:
    """
    A twistd command logging to C{log}, with the soft and hard descriptor
    limits C{nofile} if given.
    """
    twistd = str(Path(python).absolute().parent / "twistd")
    return subprocess.Popen(
        [twistd, "-n", "--pidfile=", "-l", str(log), *argv],
        cwd=log.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(HERE.parent)},
        preexec_fn=None if nofile is None else (
            lambda: resource.setrlimit(resource.RLIMIT_NOFILE, nofile)
        ),
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


async def one_request(port: int, path: str, timeout: float) -> tuple[int | str, float]:
    """
    Send one GET on a fresh connection; return its status (or how it
    failed: ``reset``, ``closed without an answer``) and latency.
    """
    started = time.monotonic()
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout)
        await asyncio.wait_for(reader.read(), timeout)
        return int(head.split()[1]), time.monotonic() - started
    except ConnectionResetError:
        return "reset", time.monotonic() - started
    except asyncio.IncompleteReadError:
        return "closed without an answer", time.monotonic() - started
    finally:
        writer.close()


async def soak(port: int, hub_pid: int, jobs: int, work_ms: float, max_queue: int) -> dict:
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
    outcomes = Counter(repr(r) if isinstance(r, Exception) else r[0] for r in results)
    served = min(jobs, max_queue)  # queued at the peak, at most
    failed = [
        r for r in results
        if isinstance(r, Exception) or r[0] not in (200, 503)
    ]
    return {
        "jobs": jobs,
        "max_queue": max_queue,
        "work_ms": work_ms,
        "rss_baseline_kib": baseline,
        "rss_queued_kib": peak,
        "kib_per_queued_job": (peak - baseline) / served,
        "probe_p50_ms": statistics.median(probes) * 1000,
        "probe_max_ms": max(probes) * 1000,
        "drain_seconds": elapsed,
        "outcomes": {str(k): v for k, v in outcomes.items()},
        # With room for all in the queue, a 503 is a failure too.
        "failed": len(failed) + (outcomes[503] if max_queue >= jobs else 0),
        "failures_sample": [repr(f) for f in failed[:5]],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--work-ms", type=float, default=1.0)
    parser.add_argument("--max-queue", type=int, help="the hub's --max-queue (default: --jobs)")
    parser.add_argument("--nofile", type=int, default=1024,
                        help="the hub's soft descriptor limit at start (default 1024)")
    parser.add_argument("--nofile-hard", type=int,
                        help="the hub's hard descriptor limit (default: this process's; "
                        "raising it takes root)")
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args()
    max_queue = args.max_queue or args.jobs
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.jobs + 200 > hard:
        print(f"fd limit {hard} too low for {args.jobs} jobs", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as work:
        hub_log, worker_log = Path(work) / "hub.log", Path(work) / "worker.log"
        hub = start(
            args.python, hub_log, "pothead-hub",
            "--consumer", f"tcp:0:interface={HOST}",
            "--worker", f"tcp:0:interface={HOST}",
            "--max-queue", str(max_queue), "--queue-timeout", "3600",
            "--request-timeout", "3600", "--access-log", "none",
            nofile=(args.nofile, args.nofile_hard or hard),
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
            report = asyncio.run(soak(port, hub.pid, args.jobs, args.work_ms, max_queue))
        finally:
            for process in (worker, hub):
                if process is not None:
                    process.kill()
                    process.wait(10)
        log = hub_log.read_text()
        report["hub_descriptors"] = [
            line.split("] ", 1)[1] for line in log.splitlines() if "descriptors: " in line
        ]
        report["hub_log_lines"] = sum(line[:4].isdigit() for line in log.splitlines())
        report["hub_emfile_lines"] = log.count("Too many open files")
    print(json.dumps(report, indent=2))
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
