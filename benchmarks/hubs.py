"""
Several hubs sharing one worker: late binding against --spread even and
against one hub with the same slots (issue 16, item 4).

    python benchmarks/hubs.py [--quick] [--seed N] [--requests N] [--repeat N]
                              [--hubs 2|3] [--rev REV] [--table SAVED.json]

Per point: N hubs (2 or 3) on 127.0.0.1, one worker with 4 slots and a
--hub for each, Poisson arrivals of fixed 50 ms jobs (/sleep?ms=50) at
80 % of the 4 slots' capacity (64 jobs/s), each arrival sent to a hub
drawn by the split's weights.  The same arrivals also go, all of them, to
one hub whose worker has the same 4 slots.  p99 efficiency is the suite's
(bench.py): the p99 latency of a zero-overhead central FIFO queue over 4
slots fed the same arrivals and job times, divided by the measured p99.
Every process is started fresh per point and stopped by its PID; see
benchmarks/README.md ("Several hubs").
"""

from __future__ import annotations

import argparse
import datetime
import heapq
import json
import random
import re
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

sys.path.insert(0, str(HERE))
import bench  # noqa: E402
import use_venv  # noqa: E402, F401  (re-executes with the venv's Python if need be)
from bench import (  # noqa: E402
    HOST,
    Proc,
    ideal_fifo,
    med,
    ms,
    pct,
    run_loadgen,
    twistd_command,
    workload,
)

SLOTS = 4
MEAN_MS = 50.0
UTIL = 0.8
DIST = "fixed"
MODES = ("one", "late", "even")
#: hub count -> [(label, weights)]
SPLITS = {
    2: [("50/50", [0.5, 0.5]), ("80/20", [0.8, 0.2]), ("100/0", [1.0, 0.0])],
    3: [("33/33/33", [1 / 3, 1 / 3, 1 / 3]), ("60/30/10", [0.6, 0.3, 0.1]), ("100/0/0", [1.0, 0.0, 0.0])],
}
#: The target: late binding's p99 efficiency at most this far below one hub's.
MARGIN = 0.03
#: Per-request client timeout, seconds: --spread even overloads a hub with
#: an uneven split, and its queue then takes many seconds to drain.
REQUEST_TIMEOUT = 120.0

PORT_RE = {
    "consumer": re.compile(r"ConsumerFactory starting on (\d+)"),
    "worker": re.compile(r"WorkerPortFactory starting on (\d+)"),
}


# -- processes -------------------------------------------------------------


class Cluster:
    """N hubs and one worker whose 4 slots are offered to them."""

    #: the source tree the hubs and the worker run from, and their
    #: environment (None: ours, with this working tree first on PYTHONPATH)
    tree: Path = REPO
    env: dict | None = None

    def __init__(self, workdir: Path, hubs: int, spread: str) -> None:
        self.workdir = workdir
        self.n = hubs
        self.spread = spread
        self.hubs: list[Proc] = []
        self.hub_logs: list[Path] = []
        self.consumer_ports: list[int] = []
        self.worker_ports: list[int] = []
        self.worker: Proc | None = None
        self.worker_log = workdir / "worker.twistd.log"

    def expected_offers(self) -> list[int]:
        """Slots each hub should hold once the worker is attached."""
        if self.spread == "late" or self.n == 1:
            return [SLOTS] * self.n
        return [sum(1 for i in range(SLOTS) if i % self.n == h) for h in range(self.n)]

    def start(self) -> "Cluster":
        twistd = twistd_command()
        for i in range(self.n):
            log = self.workdir / f"hub{i}.twistd.log"
            self.hub_logs.append(log)
            self.hubs.append(Proc(f"hub{i}", twistd + [
                "-n", "--pidfile=", "-l", str(log), "pothead-hub",
                "--consumer", f"tcp:0:interface={HOST}",
                "--worker", f"tcp:0:interface={HOST}",
                "--access-log", "none",
                "--max-queue", "100000", "--queue-timeout", "600", "--request-timeout", "600",
            ], self.workdir, cwd=self.tree, env=self.env))
        for proc, log in zip(self.hubs, self.hub_logs, strict=True):
            ports = wait_log_ports(proc, log, 30.0)
            self.consumer_ports.append(ports["consumer"])
            self.worker_ports.append(ports["worker"])
        argv = twistd + [
            "-n", "--pidfile=", "-l", str(self.worker_log), "pothead-worker",
            "--app", "app:app", "--app-dir", str(HERE), "--slots", str(SLOTS),
        ]
        for port in self.worker_ports:
            argv += ["--hub", f"tcp:{HOST}:{port}"]
        if self.spread == "even":
            argv += ["--spread", "even"]
        self.worker = Proc("worker", argv, self.workdir, cwd=self.tree, env=self.env)
        self.wait_ready(30.0)
        return self

    def check_alive(self) -> None:
        for proc in [*self.hubs, self.worker]:
            if proc is not None and not proc.alive():
                raise RuntimeError(f"{proc.name} exited early; log {proc.logpath}:\n{proc.log_text()[-2000:]}")

    def wait_offers(self, deadline: float) -> None:
        """Until each hub's worker port holds the expected connections."""
        want = self.expected_offers()
        while True:
            self.check_alive()
            have = established(self.worker_ports)
            if all(have.get(p, 0) >= w for p, w in zip(self.worker_ports, want, strict=True)):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker connections per hub {have}, expected {want}")
            time.sleep(0.05)

    def wait_ready(self, timeout: float) -> None:
        """
        Ready when every hub holds as many slots as the worker offers it.
        Late-bound attaches are logged at debug level only, so this counts
        the established connections on each hub's worker port, then proves
        them attached: as many concurrent 100 ms sleeps as the hub should
        hold slots must all be served at once (none queued behind another).
        After each hub's check the slots it used are offered again to the
        others, so the connections are counted again before the next.
        """
        deadline = time.monotonic() + timeout
        for h, (port, k) in enumerate(zip(self.consumer_ports, self.expected_offers(), strict=True)):
            while True:
                self.wait_offers(deadline)
                r = run_loadgen("open", {"port": port, "schedule": [[0.0, "/sleep?ms=100"]] * k,
                                         "timeout": 10.0, "deadline": 10.0}, timeout=30)
                lat = [x for x in r["latency"] if x is not None]
                if len(lat) == k and max(lat) < 0.18:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"hub{h}: {k} concurrent 100 ms jobs took "
                                       f"{[round(x * 1000) for x in lat]} ms, errors {r['errors']}: "
                                       "its slots are not all attached")
                time.sleep(0.1)
        self.wait_offers(deadline)
        time.sleep(0.3)

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop(grace=10.0)
        for proc in reversed(self.hubs):
            proc.stop(grace=5.0)

    def log_notes(self) -> dict:
        """What the hub and worker logs say happened: anomalies counted."""
        return scan_logs(self.workdir)


def scan_logs(workdir: Path) -> dict:
    """Counts of what the hubs' and the worker's logs in `workdir` say."""
    out = {}
    paths = sorted(workdir.glob("hub*.twistd.log")) + [workdir / "worker.twistd.log"]
    for path in paths:
        name = path.name.split(".")[0]
        # twistd rotates its log file at 1 MB: path.1 is older, path.2 older still.
        parts = sorted(path.parent.glob(path.name + ".*"),
                       key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0)
        lines = []
        for part in [*parts, path]:
            try:
                lines += part.read_text(errors="replace").splitlines()
            except OSError:
                pass
        if not lines:
            continue
        counts = {
            "lines": len(lines),
            "bytes": sum(len(ln) + 1 for ln in lines),
            "handed_back": sum(" handed back GET" in ln for ln in lines),
            # A job handed back more than the hub's limit (20) is answered 503.
            "gave_up_503": sum("503, handed back by workers" in ln for ln in lines),
            "disconnected": sum(" disconnected: " in ln for ln in lines),
            "not_attached": sum(" not attached: " in ln for ln in lines),
            "refused_or_dropped": sum("refused attach" in ln or "dropped worker-port" in ln for ln in lines),
            "requeued_lost": sum("; requeued" in ln for ln in lines),
            # The worker's ClientService logs each reconnect: with late
            # binding, one per withdrawn offer (a job taken elsewhere).
            "reconnects": sum("Scheduling retry" in ln for ln in lines),
            # twistd's log file takes debug events too: a hub's late-bound
            # attaches and detaches show here, a line each.
            "attached": sum(" attached to pool " in ln for ln in lines),
            "detached": sum(ln.endswith(" detached") for ln in lines),
            "warn": sum("#warn]" in ln for ln in lines),
            # Warnings other than the hub's descriptor sizing (every start
            # with --max-queue 100000 has one) and the 503s counted above.
            "other_warn": sum("#warn]" in ln and "descriptors:" not in ln
                              and "handed back by workers" not in ln for ln in lines),
            "error": sum("#error]" in ln or "#critical]" in ln for ln in lines),
            "traceback": sum("Traceback" in ln or "Unhandled" in ln for ln in lines),
        }
        odd = [ln for ln in lines
               if ("#warn]" in ln or "#error]" in ln or "#critical]" in ln or "Traceback" in ln
                   or "Unhandled" in ln or " disconnected: " in ln or " not attached: " in ln)
               and "descriptors:" not in ln]
        counts["examples"] = odd[:5]
        out[name] = counts
    return out


def wait_log_ports(proc: Proc, log: Path, timeout: float) -> dict[str, int]:
    """The ports a hub bound, from its 'XFactory starting on N' log lines."""
    deadline = time.monotonic() + timeout
    while True:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited early:\n{proc.log_text()[-2000:]}")
        try:
            text = log.read_text(errors="replace")
        except OSError:
            text = ""
        found = {k: rx.search(text) for k, rx in PORT_RE.items()}
        if all(found.values()):
            return {k: int(m.group(1)) for k, m in found.items()}
        if time.monotonic() > deadline:
            raise RuntimeError(f"{proc.name}: no listening ports in {log} after {timeout}s")
        time.sleep(0.05)


def established(ports: list[int]) -> dict[int, int]:
    """ESTABLISHED TCP connections whose local port is one of `ports` (the
    hubs' ends of the worker's connections), from /proc/net/tcp."""
    want = set(ports)
    out = dict.fromkeys(ports, 0)
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            port = int(fields[1].rsplit(":", 1)[1], 16)
            if port in want and fields[3] == "01":
                out[port] += 1
    return out


# -- measurement -------------------------------------------------------------


def hub_choices(seed: int, label: str, weights: list[float], n: int) -> list[int]:
    """Which hub each arrival goes to: independent draws by the weights, so
    each hub sees a Poisson process of its share (seeded per split)."""
    rng = random.Random(f"hubs/{seed}/{label}")
    return rng.choices(range(len(weights)), weights=weights, k=n)


def age_blind(arrivals, jobs, targets: list[int], seed: int) -> list[float]:
    """
    Response times of zero-overhead hubs that each keep their own FIFO
    queue, where a freed slot takes the head job of a hub chosen at random
    among those with jobs waiting, whatever its age: what late binding
    (the first hub to send a job wins the slot) amounts to when several
    hubs have a queue.  A model, to read the measured gap against; the
    central FIFO queue (ideal_fifo) takes the oldest job instead.
    """
    rng = random.Random(f"age-blind/{seed}")
    queues: dict[int, list[int]] = {h: [] for h in set(targets)}
    busy: list[tuple[float, int]] = []  # (free at, slot)
    idle = list(range(SLOTS))
    out = [0.0] * len(arrivals)
    i, n = 0, len(arrivals)
    while i < n or busy:
        if i < n and (not busy or arrivals[i] <= busy[0][0]):
            now = arrivals[i]
            queues[targets[i]].append(i)
            i += 1
        else:
            now, slot = heapq.heappop(busy)
            idle.append(slot)
        while idle and any(queues.values()):
            hub = rng.choice([h for h, q in queues.items() if q])
            job = queues[hub].pop(0)
            end = now + jobs[job]
            out[job] = end - arrivals[job]
            heapq.heappush(busy, (end, idle.pop()))
    return out


def measure(cluster: Cluster, arrivals, jobs, targets: list[int]) -> dict:
    """Drive the arrivals, arrival i to hub targets[i]; the suite's figures."""
    schedule = [[a, f"/sleep?ms={j * 1000:.3f}", cluster.consumer_ports[h]]
                for a, j, h in zip(arrivals, jobs, targets, strict=True)]
    span = arrivals[-1] + REQUEST_TIMEOUT
    procs = [*cluster.hubs, cluster.worker]
    cpu0 = {p.name: bench.cpu_seconds(p.pid) for p in procs}
    t0 = time.monotonic()
    r = run_loadgen("open", {"schedule": schedule, "timeout": REQUEST_TIMEOUT, "deadline": span},
                    timeout=span + 60)
    elapsed = time.monotonic() - t0
    # Share of one core each process used while the load ran.
    cpu = {p.name: 100.0 * (bench.cpu_seconds(p.pid) - cpu0[p.name]) / elapsed for p in procs}
    lat = r["latency"]
    ideal = ideal_fifo(arrivals, jobs, SLOTS)
    p99, ip99 = pct(lat, 99), pct(ideal, 99)
    waits = [None if x is None else x - j for x, j in zip(lat, jobs, strict=True)]
    per_hub = {}
    for h in sorted(set(targets)):
        mine = [x for x, t in zip(lat, targets, strict=True) if t == h]
        per_hub[f"hub{h}"] = {"requests": len(mine), "p50_ms": ms(pct(mine, 50)), "p99_ms": ms(pct(mine, 99))}
    return {
        "p50_ms": ms(pct(lat, 50)), "p90_ms": ms(pct(lat, 90)), "p99_ms": ms(p99),
        "ideal_p50_ms": ms(pct(ideal, 50)), "ideal_p99_ms": ms(ip99),
        "efficiency": (ip99 / p99) if p99 else None,
        "wait_p50_ms": ms(pct(waits, 50)), "wait_p99_ms": ms(pct(waits, 99)),
        "ideal_wait_p99_ms": ms(pct([x - j for x, j in zip(ideal, jobs, strict=True)], 99)),
        "requests": len(schedule),
        "failed": sum(r["errors"].values()),
        "errors": r["errors"],
        "client_lag_max_ms": ms(r["lag_max"]),
        "per_hub": per_hub,
        "cpu_pct": cpu,
    }


def run_point(workroot: Path, tag: str, hubs: int, mode: str, arrivals, jobs, targets) -> dict:
    workdir = workroot / tag
    workdir.mkdir()
    n = 1 if mode == "one" else hubs
    cluster = Cluster(workdir, n, "even" if mode == "even" else "late")
    t0 = time.monotonic()
    try:
        cluster.start()
        started = time.monotonic() - t0
        res = measure(cluster, arrivals, jobs, targets if n > 1 else [0] * len(arrivals))
        res["start_s"] = started
    except Exception as e:  # noqa: BLE001 - record and go on
        res = {"error": f"{type(e).__name__}: {e}"}
    finally:
        cluster.stop()
    res["logs"] = cluster.log_notes()
    res["workdir"] = str(workdir)
    res["elapsed_s"] = time.monotonic() - t0
    return res


def handed_back(res: dict) -> int:
    return sum(v.get("handed_back", 0) for v in res.get("logs", {}).values())


# -- report ------------------------------------------------------------------


def summarise(runs: list[dict], rows, models: dict) -> dict:
    out = {}
    for hubs, label in rows:
        key = f"{hubs}:{label}"
        row = {}
        for mode in MODES:
            points = [run[key][mode] for run in runs if mode in run.get(key, {})]
            row[mode] = {f: med([p.get(f) for p in points])
                         for f in ("efficiency", "p50_ms", "p99_ms", "ideal_p99_ms", "wait_p99_ms", "failed")}
            row[mode]["handed_back"] = med([handed_back(p) for p in points])
            row[mode]["per_repeat_efficiency"] = [p.get("efficiency") for p in points]
        one, late = row["one"]["efficiency"], row["late"]["efficiency"]
        row["late_minus_one"] = None if one is None or late is None else late - one
        row["pass"] = None if row["late_minus_one"] is None else row["late_minus_one"] >= -MARGIN
        row["age_blind_model_efficiency"] = med(models.get(key, []))
        out[key] = row
    return out


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def table(result: dict) -> str:
    s = result["summary"]
    cfg = result["config"]
    mach = result["machine"]
    lines = []
    w = lines.append
    w(f"pothead, several hubs — {result['date']} — {result['mode']} run, median of {cfg['repeat']} "
      f"— {mach['cpus']} CPUs ({mach['cpu']}), Python {mach['python']}, "
      f"pothead {mach['versions'].get('pothead', '?') if result['pothead'] == 'working tree' else result['pothead']}")
    w(f"{SLOTS} slots in one worker, Poisson arrivals of {MEAN_MS:g} ms jobs at {UTIL * 100:.0f} % load "
      f"({UTIL * SLOTS / (MEAN_MS / 1000):.0f}/s), {cfg['requests']} requests/point, seed {cfg['seed']}")
    w("p99 efficiency = ideal p99 / measured p99 (ideal: central FIFO over the 4 slots, same arrivals);")
    w("(p99 latency ms); 'one hub' gets every arrival, the same 4 slots; 'handed back': late binding's")
    w("jobs a hub sent on an open offer the worker was withdrawing (requeued); 'model': p99 efficiency")
    w("of zero-overhead hubs with a queue each, a freed slot taking the head job of a random hub with")
    w("jobs waiting (age-blind first come, first served, which bids replace), no processes involved;")
    w("'nF': n requests failed (median; failures are left out of the p99, as in bench.py)")
    w("")
    w(f"{'hubs':>4s}  {'split':9s} {'one hub':>16s} {'late binding':>16s} {'--spread even':>18s} "
      f"{'late-one':>9s}  {'handed back':>11s}  {'model':>5s}  target")
    for key, row in s.items():
        hubs, label = key.split(":")
        cells = []
        for mode in MODES:
            r = row[mode]
            cell = f"{fmt(r['efficiency'], '.3f')} ({fmt(r['p99_ms'], '.0f')})"
            if r["failed"]:
                cell += f" {r['failed']:.0f}F"
            cells.append(cell)
        mark = {True: "PASS", False: "FAIL", None: "?"}[row["pass"]]
        w(f"{hubs:>4s}  {label:9s} {cells[0]:>16s} {cells[1]:>16s} {cells[2]:>18s} "
          f"{fmt(row['late_minus_one'], '+.3f'):>9s}  {fmt(row['late']['handed_back'], '.0f'):>11s}  "
          f"{fmt(row['age_blind_model_efficiency'], '.3f'):>5s}  {mark}")
    w("")
    w(f"Target: late binding's p99 efficiency within {MARGIN} of one hub's, at every split.")
    for key, row in s.items():
        hubs, label = key.split(":")
        mark = {True: "PASS", False: "FAIL", None: "?   "}[row["pass"]]
        per = "  ".join(f"{fmt(a, '.3f')}/{fmt(b, '.3f')}"
                        for a, b in zip(row["late"]["per_repeat_efficiency"],
                                        row["one"]["per_repeat_efficiency"], strict=False))
        w(f"  {mark} {hubs} hubs {label}: late {fmt(row['late']['efficiency'], '.3f')} vs one hub "
          f"{fmt(row['one']['efficiency'], '.3f')} ({fmt(row['late_minus_one'], '+.3f')}); "
          f"per repeat late/one: {per}")
    notes = []
    warns: dict[str, list[int]] = {}
    for rep, run in enumerate(result["runs"]):
        for key, modes in run.items():
            for mode, res in modes.items():
                where = f"r{rep + 1} {key} {mode}"
                if "error" in res:
                    notes.append(f"{where}: {res['error'][:300]}")
                if res.get("failed"):
                    notes.append(f"{where}: {res['failed']} failed requests {res.get('errors')}")
                for proc, c in res.get("logs", {}).items():
                    bad = {k: c[k] for k in ("gave_up_503", "disconnected", "not_attached", "refused_or_dropped",
                                             "requeued_lost", "error", "traceback") if c.get(k)}
                    if bad:
                        notes.append(f"{where} {proc} log: {bad}; e.g. {c['examples'][:1]}")
                    if c.get("other_warn") and not bad:
                        # The same warning at every start: one line for them all.
                        first = next((ln for ln in c["examples"] if "#warn]" in ln), "")
                        warns.setdefault(re.sub(r"^\S+ |0x[0-9a-f]+", "", first)[:160], []).append(
                            c["other_warn"])
    for text, counts in warns.items():
        notes.append(f"warnings in {len(counts)} points' logs ({min(counts)}-{max(counts)} each), e.g. {text}")
    if notes:
        w("")
        w("Seen in the logs and results:")
        for n in notes[:40]:
            w("  " + n[:400])
    return "\n".join(lines)


def reprint(path: Path) -> int:
    """The table of a saved run, with its log counts read again."""
    result = json.loads(path.read_text())
    for run in result["runs"]:
        for modes in run.values():
            for res in modes.values():
                workdir = Path(res.get("workdir", ""))
                if workdir.is_dir():
                    res["logs"] = scan_logs(workdir)
    print(table(result))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description="several hubs: late binding vs --spread even vs one hub")
    parser.add_argument("--quick", action="store_true", help="smoke pass: 150 requests per point, 1 repeat")
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--requests", type=int, default=None, help="requests per point (default 1500; 150 with --quick)")
    parser.add_argument("--repeat", type=int, default=None, help="repeats; medians are reported (default 3; 1 with --quick)")
    parser.add_argument("--hubs", type=int, action="append", choices=sorted(SPLITS),
                        help="only these hub counts (repeatable; default 2 and 3)")
    parser.add_argument("--rev", metavar="REV",
                        help="run pothead at git revision REV (extracted with git archive, as "
                             "bench.py --baseline does) instead of this working tree")
    parser.add_argument("--table", metavar="JSON",
                        help="print the table of a saved run again (its logs re-read if still there)")
    parser.add_argument("--output", default=None, help="JSON path (default results/hubs-<timestamp>.json)")
    args = parser.parse_args()
    if args.table:
        return reprint(Path(args.table))
    requests = args.requests or (150 if args.quick else 1500)
    repeat = args.repeat or (1 if args.quick else 3)
    hub_counts = sorted(set(args.hubs or SPLITS))
    rows = [(h, label) for h in hub_counts for label, _ in SPLITS[h]]
    workroot = bench.standalone_run("hubs")
    measured = "working tree"
    if args.rev:
        # A commit, not the working tree others may be editing meanwhile.
        try:
            sha, short = bench.resolve_rev(args.rev)
        except Exception:  # noqa: BLE001
            parser.error(f"--rev {args.rev}: not a commit of {REPO}")
        snapshot = bench.baseline_system(sha, short, workroot)
        Cluster.tree, Cluster.env = snapshot.tree, snapshot.env
        measured = f"{short} ({args.rev})"
    t_all = time.monotonic()
    runs = []
    models: dict[str, list[float]] = {}  # age-blind model's p99 efficiency per repeat
    for rep in range(repeat):
        seed = args.seed + 7919 * rep  # as bench.py's scheduling repeats
        arrivals, jobs = workload(seed, UTIL, DIST, requests, SLOTS, MEAN_MS)
        run = {}
        runs.append(run)
        for i, (hubs, label) in enumerate(rows):
            weights = dict(SPLITS[hubs])[label]
            targets = hub_choices(seed, label, weights, requests)
            key = f"{hubs}:{label}"
            run[key] = {}
            ideal_p99 = pct(ideal_fifo(arrivals, jobs, SLOTS), 99)
            models.setdefault(key, []).append(ideal_p99 / pct(age_blind(arrivals, jobs, targets, seed), 99))
            # The modes take turns going first, so drift hits each alike.
            shift = (rep + i) % len(MODES)
            for mode in MODES[shift:] + MODES[:shift]:
                t1 = time.monotonic()
                print(f"[{rep + 1}/{repeat}] {hubs} hubs {label:9s} {mode:5s} ...", end=" ", flush=True)
                tag = f"r{rep}-{hubs}h-{label.replace('/', '-')}-{mode}"
                res = run_point(workroot, tag, hubs, mode, arrivals, jobs, targets)
                run[key][mode] = res
                if "error" in res:
                    print(f"ERROR {res['error'][:300]}", flush=True)
                else:
                    print(f"{time.monotonic() - t1:.1f}s eff={res['efficiency']:.3f} "
                          f"p99={res['p99_ms']:.1f} ms (ideal {res['ideal_p99_ms']:.1f}) "
                          f"wait p99={res['wait_p99_ms']:.1f} ms failed={res['failed']} "
                          f"handed back={handed_back(res)} "
                          f"CPU% {' '.join(f'{k} {v:.0f}' for k, v in res['cpu_pct'].items())}"
                          + (f" errors {res['errors']}" if res["errors"] else ""), flush=True)
    stamp = datetime.datetime.now(datetime.timezone.utc)
    result = {
        "date": stamp.isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "machine": bench.machine(),
        "pothead": measured,
        "config": {"slots": SLOTS, "mean_ms": MEAN_MS, "dist": DIST, "utilisation": UTIL,
                   "requests": requests, "repeat": repeat, "seed": args.seed, "margin": MARGIN,
                   "splits": {h: SPLITS[h] for h in hub_counts}},
        "elapsed_s": time.monotonic() - t_all,
        "workdir": str(workroot),
        "summary": summarise(runs, rows, models),
        "runs": runs,
    }
    text = table(result)
    result["table"] = text
    print()
    print(text)
    out = Path(args.output) if args.output else HERE / "results" / f"hubs-{stamp:%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    print(f"\nwrote {out} in {result['elapsed_s'] / 60:.1f} min (logs: {workroot})")
    errors = [1 for run in runs for modes in run.values() for res in modes.values() if "error" in res]
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
