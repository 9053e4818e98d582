"""
CPU-bound jobs: two threads in one worker process against two worker
processes (issue 17).

    python benchmarks/processes.py [--quick] [--repeat N] [--duration S]
                                   [--clients N] [--render QUERY]

Per point: a hub on 127.0.0.1 and the demo app (pothead.demo, Mandelbrot
renders in pure Python) behind it, either ``--slots 2`` (two threads in
one process: the baseline) or ``--processes 2 --slots 1`` (two processes
of one slot each).  Closed-loop clients, twice as many as the slots so
that a slot never waits for its next job, ask for the same render for a
fixed time; jobs per second are the renders completed in that window.
The two configurations take turns going first, every process is started
fresh per point and stopped by its PID; the ratio is processes over
threads, from the medians over the repeats.  See benchmarks/README.md
("Processes").
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

sys.path.insert(0, str(HERE))
import bench  # noqa: E402
import use_venv  # noqa: E402, F401  (re-executes with the venv's Python if need be)
from bench import HOST, Proc, med, twistd_command  # noqa: E402
from hubs import established, wait_log_ports  # noqa: E402

CONFIGS = {
    "threads": ["--slots", "2"],
    "processes": ["--processes", "2", "--slots", "1"],
}
#: The issue's target for processes over threads.
TARGET = 1.8
#: The issue's render: 400x200, as a new user tried it.
RENDER = "/?width=400&height=200&iterations=200"
QUICK_RENDER = "/?width=200&height=100&iterations=200"


def start_point(workdir: Path, name: str, config: list[str]) -> tuple[Proc, Proc, int]:
    """A hub and a demo worker with `config`, ready: (hub, worker, consumer port)."""
    twistd = twistd_command()
    hub_log = workdir / f"{name}-hub.twistd.log"
    hub = Proc(f"{name}-hub", twistd + [
        "-n", "--pidfile=", "-l", str(hub_log), "pothead-hub",
        "--consumer", f"tcp:0:interface={HOST}", "--worker", f"tcp:0:interface={HOST}",
        "--access-log", "none",
    ], workdir, cwd=REPO)
    ports = wait_log_ports(hub, hub_log, 30.0)
    worker = Proc(f"{name}-worker", twistd + [
        "-n", "--pidfile=", "-l", str(workdir / f"{name}-worker.twistd.log"), "pothead-worker",
        "--app", "pothead.demo:app", "--hub", f"tcp:{HOST}:{ports['worker']}", *config,
    ], workdir, cwd=REPO)
    deadline = time.monotonic() + 60
    while established([ports["worker"]])[ports["worker"]] < 2:
        for proc in (hub, worker):
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited early:\n{proc.log_text()[-2000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name}: the worker's 2 slots did not connect within 60 s")
        time.sleep(0.05)
    # Attached, and warm: a small render on each slot at once.
    drive(ports["consumer"], "/?width=40&height=20", clients=2, warmup=0.0, duration=0.5)
    return hub, worker, ports["consumer"]


def cpu_of_tree(pid: int) -> float:
    """CPU seconds used so far by `pid` and its living children."""
    import psutil

    try:
        root = psutil.Process(pid)
        total = 0.0
        for proc in [root, *root.children(recursive=True)]:
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                pass
        return total
    except psutil.NoSuchProcess:
        return 0.0


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent not idle, so far."""
    import psutil

    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def stop_worker(worker: Proc) -> None:
    """
    SIGTERM to the worker (a --processes parent drains its children), by
    its PID; then SIGKILL to any child still there, by its PID, so that a
    parent that had to be killed leaves no orphan behind.
    """
    import psutil

    try:
        children = psutil.Process(worker.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    worker.stop(grace=30.0)
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass


def drive(port: int, path: str, clients: int, warmup: float, duration: float) -> dict:
    """
    `clients` closed-loop clients on keep-alive connections, each sending
    the next request when the last is answered, for warmup + duration
    seconds (bounded: each request has a 120 s timeout, and the clients
    stop sending at the end).  Jobs per second are counted from the
    answers that arrived within the window after the warmup, whenever
    they were sent: (answers - 1) over the time from the first to the
    last, which neither a job cut by the window's edges nor the rounding
    to whole jobs (about 20 per window here) skews.
    """
    start = time.monotonic()
    window = (start + warmup, start + warmup + duration)
    done: list[float] = []
    errors: dict[str, int] = {}
    lock = threading.Lock()

    def client() -> None:
        connection = None
        while time.monotonic() < window[1]:
            try:
                if connection is None:
                    connection = http.client.HTTPConnection(HOST, port, timeout=120)
                connection.request("GET", path)
                response = connection.getresponse()
                response.read()
                status = response.status
                if response.will_close:
                    connection.close()
                    connection = None
            except (OSError, http.client.HTTPException) as e:
                status = f"{type(e).__name__}: {e}"
                if connection is not None:
                    connection.close()
                connection = None
            with lock:
                if status == 200:
                    done.append(time.monotonic())
                else:
                    errors[str(status)] = errors.get(str(status), 0) + 1
        if connection is not None:
            connection.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(warmup + duration + 130)
    counted = sorted(t for t in done if window[0] <= t <= window[1])
    rate = (len(counted) - 1) / (counted[-1] - counted[0]) if len(counted) > 2 else None
    return {"jobs": len(counted), "jobs_per_s": rate, "answered": len(done), "errors": errors}


def run_point(workroot: Path, tag: str, name: str, args) -> dict:
    workdir = workroot / tag
    workdir.mkdir()
    hub = worker = None
    try:
        t0 = time.monotonic()
        hub, worker, port = start_point(workdir, name, CONFIGS[name])
        started = time.monotonic() - t0
        cpu0, hub0, busy0 = cpu_of_tree(worker.pid), cpu_of_tree(hub.pid), busy_seconds()
        t1 = time.monotonic()
        result = drive(port, args.render, args.clients, args.warmup, args.duration)
        elapsed = time.monotonic() - t1
        cpu = (cpu_of_tree(worker.pid) - cpu0) / elapsed
        hub_cpu = (cpu_of_tree(hub.pid) - hub0) / elapsed
        # What else ran on the machine meanwhile (the clients, and anything
        # not ours): a point that shared the cores shows it here.
        other = (busy_seconds() - busy0) / elapsed - cpu - hub_cpu
        result.update(start_s=started, worker_cpus=cpu, hub_cpus=hub_cpu, other_cpus=other)
    except Exception as e:  # noqa: BLE001 - record and go on
        result = {"error": f"{type(e).__name__}: {e}"}
    finally:
        if worker is not None:
            stop_worker(worker)
        if hub is not None:
            hub.stop(grace=10.0)
    result["workdir"] = str(workdir)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description="--slots 2 against --processes 2 --slots 1, "
                                                 "CPU-bound demo renders")
    parser.add_argument("--quick", action="store_true",
                        help="smoke pass: 1 repeat, 3 s per point, a smaller render")
    parser.add_argument("--repeat", type=int, default=None, help="repeats (default 3; 1 with --quick)")
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds measured per point (default 12; 3 with --quick)")
    parser.add_argument("--warmup", type=float, default=None,
                        help="seconds of load before the window (default 2; 1 with --quick)")
    parser.add_argument("--clients", type=int, default=4, help="closed-loop clients (default 4)")
    parser.add_argument("--render", default=None, help=f"the request (default {RENDER})")
    parser.add_argument("--output", default=None,
                        help="JSON path (default results/processes-<timestamp>.json)")
    args = parser.parse_args()
    args.repeat = args.repeat or (1 if args.quick else 3)
    args.duration = args.duration or (3.0 if args.quick else 12.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 2.0)
    args.render = args.render or (QUICK_RENDER if args.quick else RENDER)
    workroot = bench.standalone_run("processes")
    t_all = time.monotonic()
    runs: list[dict] = []
    names = list(CONFIGS)
    for rep in range(args.repeat):
        run: dict = {}
        runs.append(run)
        # The configurations take turns going first, so drift hits each alike.
        for name in names[rep % 2:] + names[:rep % 2]:
            print(f"[{rep + 1}/{args.repeat}] {name:9s} ...", end=" ", flush=True)
            res = run_point(workroot, f"r{rep}-{name}", name, args)
            run[name] = res
            if "error" in res:
                print(f"ERROR {res['error'][:300]}", flush=True)
            else:
                rate = "-" if res["jobs_per_s"] is None else f"{res['jobs_per_s']:.2f}"
                print(f"{rate} jobs/s ({res['jobs']} answers in {args.duration:g} s), "
                      f"CPU cores: worker {res['worker_cpus']:.2f}, hub {res['hub_cpus']:.2f}, "
                      f"everything else {res['other_cpus']:.2f}"
                      + (f", errors {res['errors']}" if res["errors"] else ""), flush=True)
    summary = {name: {
        "jobs_per_s": med([run[name].get("jobs_per_s") for run in runs]),
        "worker_cpus": med([run[name].get("worker_cpus") for run in runs]),
        "other_cpus": med([run[name].get("other_cpus") for run in runs]),
        "per_repeat": [run[name].get("jobs_per_s") for run in runs],
    } for name in names}
    threads, processes = summary["threads"]["jobs_per_s"], summary["processes"]["jobs_per_s"]
    ratio = processes / threads if threads and processes else None
    per_repeat = [run["processes"]["jobs_per_s"] / run["threads"]["jobs_per_s"]
                  for run in runs if run["threads"].get("jobs_per_s") and run["processes"].get("jobs_per_s")]
    stamp = datetime.datetime.now(datetime.timezone.utc)
    mach = bench.machine()
    lines = [
        f"pothead, processes against threads — {stamp.isoformat(timespec='seconds')} — "
        f"{'quick' if args.quick else 'full'} run, median of {args.repeat} — {mach['cpus']} CPUs "
        f"({mach['cpu']}), Python {mach['python']}, pothead {mach['versions'].get('pothead', '?')}",
        f"pothead.demo GET {args.render}, {args.clients} closed-loop clients, "
        f"{args.duration:g} s measured after {args.warmup:g} s",
        "",
        "CPU in cores over the measured window: the worker's processes; 'else': everything",
        "else on the machine but the hub (the clients, and anything not ours)",
        "",
        f"{'worker':34s} {'jobs/s':>8s} {'CPU':>5s} {'else':>5s}  jobs/s per repeat",
    ]
    for name, label in (("threads", "--slots 2 (baseline)"), ("processes", "--processes 2 --slots 1")):
        s = summary[name]
        jobs = "-" if s["jobs_per_s"] is None else f"{s['jobs_per_s']:.2f}"
        cpus = "-" if s["worker_cpus"] is None else f"{s['worker_cpus']:.2f}"
        other = "-" if s["other_cpus"] is None else f"{s['other_cpus'] + 0.0:.2f}"
        reps = "  ".join("-" if x is None else f"{x:.2f}" for x in s["per_repeat"])
        lines.append(f"{label:34s} {jobs:>8s} {cpus:>5s} {other:>5s}  {reps}")
    lines.append("")
    if ratio is None:
        lines.append("ratio processes/threads: - (a point failed)")
    else:
        lines.append(f"ratio processes/threads: {ratio:.2f}x (per repeat: "
                     f"{'  '.join(f'{r:.2f}' for r in per_repeat)}); target >= {TARGET}x: "
                     f"{'MET' if ratio >= TARGET else 'MISS'}")
    failed = {f"r{i + 1} {name}": res.get("errors") or res.get("error")
              for i, run in enumerate(runs) for name, res in run.items()
              if res.get("errors") or res.get("error")}
    if failed:
        lines.append(f"failed requests or points: {failed}")
    text = "\n".join(lines)
    print()
    print(text)
    result = {"date": stamp.isoformat(timespec="seconds"), "mode": "quick" if args.quick else "full",
              "machine": mach, "config": {"render": args.render, "clients": args.clients,
                                          "duration": args.duration, "warmup": args.warmup,
                                          "repeat": args.repeat, "configs": CONFIGS},
              "summary": summary, "ratio": ratio, "per_repeat_ratio": per_repeat,
              "runs": runs, "table": text, "elapsed_s": time.monotonic() - t_all}
    out = Path(args.output) if args.output else HERE / "results" / f"processes-{stamp:%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    print(f"\nwrote {out} in {result['elapsed_s'] / 60:.1f} min (logs: {workroot})")
    return 1 if any("error" in res for run in runs for res in run.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
