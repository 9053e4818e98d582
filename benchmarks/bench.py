"""
The pothead benchmark suite: starts every system on 127.0.0.1, measures,
stops what it started, prints a table and writes results/latest.json.

Run it through ``benchmarks/run`` (which installs haproxy, nginx and wrk
when missing); see benchmarks/README.md for what every number means.
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import json
import math
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PY = sys.executable
LOADGEN = str(HERE / "loadgen.py")
HOST = "127.0.0.1"

sys.path.insert(0, str(HERE))
import loadgen  # noqa: E402

SYSTEMS = ["direct", "container", "haproxy", "roundrobin", "pothead"]
MEASUREMENTS = ["scheduling", "overhead", "throughput", "short", "bigbody", "memory"]

# -- settings ----------------------------------------------------------------

FULL = {
    "slots": 4,
    "mean_ms": 50.0,
    "utilisations": [0.5, 0.8, 0.95],
    "dists": ["exp", "fixed"],
    "sched_requests": 300,
    "seq_count": 2000,
    "seq_warmup": 200,
    "tp_duration": 5.0,
    "tp_connections": 32,
    "short_ms": 5.0,
    "short_clients": 16,
    "short_duration": 5.0,
    "big_bytes": 1_000_000_000,
    "big_systems": ["direct", "haproxy", "roundrobin", "pothead"],
    "mem_jobs": 10_000,
    "mem_hold_ms": 40_000,
    "mem_systems": ["haproxy", "pothead"],
}

QUICK = dict(
    FULL,
    utilisations=[0.8],
    dists=["exp"],
    sched_requests=30,
    seq_count=100,
    seq_warmup=20,
    tp_duration=0.5,
    short_duration=0.5,
    big_bytes=20_000_000,
    big_systems=["pothead"],
    mem_jobs=200,
    mem_hold_ms=8000,
    mem_systems=["pothead"],
)

# -- processes ---------------------------------------------------------------

_ALL_PROCS: list["Proc"] = []


class Proc:
    """A child process of ours, logged to a file, stopped by its PID."""

    def __init__(self, name: str, argv: list[str], logdir: Path, cwd: Path | None = None,
                 stdin=subprocess.DEVNULL, stdout=None, env: dict | None = None) -> None:
        self.name = name
        self.logpath = logdir / f"{name}.log"
        self.log = open(self.logpath, "ab")
        self.popen = subprocess.Popen(
            argv,
            stdin=stdin,
            stdout=stdout if stdout is not None else self.log,
            stderr=self.log if stdout is not None else subprocess.STDOUT,
            cwd=str(cwd) if cwd else None,
            env=env,
        )
        self.pid = self.popen.pid
        _ALL_PROCS.append(self)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, grace: float = 5.0) -> None:
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(signal.SIGTERM)
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
            except ProcessLookupError:
                pass
        self.log.close()
        if self in _ALL_PROCS:
            _ALL_PROCS.remove(self)

    def log_text(self) -> str:
        try:
            return self.logpath.read_text(errors="replace")
        except OSError:
            return ""


def stop_all() -> None:
    for proc in list(reversed(_ALL_PROCS)):
        try:
            proc.stop(grace=2.0)
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass


def _on_signal(signum, frame):
    stop_all()
    sys.exit(128 + signum)


def standalone_run(name: str) -> Path:
    """
    Set up a benchmark script that runs on its own (hubs.py, pools.py...):
    this working tree's pothead first on PYTHONPATH, whatever an install
    last linked; every process it starts stopped at exit or on SIGTERM
    and SIGINT; a work directory for the logs, printed and returned.
    """
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    atexit.register(stop_all)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    workroot = Path(tempfile.mkdtemp(prefix=f"pothead-{name}-"))
    print(f"# work dir (logs): {workroot}; python {sys.executable}", flush=True)
    return workroot


def quick_or_full(description: str, name: str):
    """
    The command line of a benchmark of pothead against another system
    (``--quick``, ``--repeat N``), and its run set up (L{standalone_run}).

    :return: the arguments, the measurements' settings, the repeats and
        the work directory.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="smoke pass: few requests, 1 repeat")
    parser.add_argument("--repeat", type=int, default=None, help="repeats (default 5; 1 with --quick)")
    args = parser.parse_args()
    cfg = QUICK if args.quick else FULL
    repeat = args.repeat or (1 if args.quick else 5)
    return args, cfg, repeat, standalone_run(name)


def take_turns(measures: dict, repeat: int, workroot: Path, line) -> dict[str, list[dict]]:
    """
    Measure each system once per repeat, the systems taking turns going
    first, so that drift on a shared machine hits all alike.

    :param measures: each system's name and its measurement, called with
        a fresh work directory.
    :param line: what to print of one measurement, after its name.
    :return: each system's measurements, in repeat order.
    """
    names = list(measures)
    results: dict[str, list[dict]] = {name: [] for name in names}
    for rep in range(repeat):
        for name in names if rep % 2 == 0 else names[::-1]:
            workdir = workroot / f"r{rep}-{name}"
            workdir.mkdir()
            results[name].append(measures[name](workdir))
            print(f"[{rep + 1}/{repeat}] {name:8s} {line(results[name][-1])}", flush=True)
    return results


def overhead_and_throughput(cls, workdir: Path, cfg: dict) -> dict:
    """A system of class C{cls} started fresh, measured as pothead is, and stopped."""
    system = cls(workdir, cfg["slots"])
    try:
        system.start()
        return {"overhead": m_overhead(system, cfg), "throughput": m_throughput(system, cfg)}
    finally:
        system.stop()


def one_against_another(systems: dict, cfg: dict, repeat: int, workroot: Path,
                        title: str) -> dict[str, list[dict]]:
    """
    Two systems (name: class, the reference first), measured as pothead
    is in turns, and their medians printed: the second's added keep-alive
    p50 and its throughput ratio.
    """
    started = time.monotonic()
    results = take_turns(
        {name: lambda workdir, cls=cls: overhead_and_throughput(cls, workdir, cfg)
         for name, cls in systems.items()},
        repeat, workroot, p50_and_rps)
    (a, b) = systems
    p50 = {k: med([r["overhead"]["keepalive"]["p50_ms"] for r in v]) for k, v in results.items()}
    rps = {k: med([r["throughput"]["rps"] for r in v]) for k, v in results.items()}
    added = p50[b] - p50[a]
    print()
    print(f"{title}, {cfg['slots']} slots, median of {repeat} "
          f"({time.monotonic() - started:.0f} s, {machine()['cpus']} CPUs):")
    print(f"  keep-alive p50: {a} {p50[a]:.3f} ms, {b} {p50[b]:.3f} ms: "
          f"added {added:+.3f} ms ({added / p50[a] * 100:+.1f} %)")
    print(f"  /tiny throughput: {a} {rps[a]:.0f} req/s, {b} {rps[b]:.0f} req/s: "
          f"ratio {rps[b] / rps[a]:.3f}")
    return results


def p50_and_rps(res: dict) -> str:
    """One overhead-and-throughput measurement, in a line."""
    failed = res["overhead"]["keepalive"]["failed"] + res["throughput"]["failed"]
    return (f"keep-alive p50 {res['overhead']['keepalive']['p50_ms']:.3f} ms, /tiny "
            f"{res['throughput']['rps']:.0f} req/s (failed {failed})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float, proc: Proc | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited early; log {proc.logpath}:\n{proc.log_text()[-2000:]}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {HOST}:{port} after {timeout}s")


def probe(port: int, path: str = "/tiny", timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        r = loadgen.run_seq({"port": port, "path": path, "count": 1, "keepalive": False, "deadline": 5})
        if r["latency"]:
            return
        last = r["errors"]
        time.sleep(0.1)
    raise RuntimeError(f"no 200 from {HOST}:{port}{path} within {timeout}s: {last}")


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


class RssSampler(threading.Thread):
    def __init__(self, pids: dict[str, int], interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.interval = interval
        self.peak = {k: 0 for k in pids}
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            for name, pid in self.pids.items():
                try:
                    self.peak[name] = max(self.peak[name], rss_kb(pid))
                except OSError:
                    pass
            self._halt.wait(self.interval)

    def stop(self) -> dict[str, int]:
        self._halt.set()
        self.join()
        return self.peak


def twistd_command() -> list[str]:
    candidate = Path(PY).with_name("twistd")
    if candidate.exists():
        return [str(candidate)]
    found = shutil.which("twistd")
    if found:
        return [found]
    return [PY, "-c", "from twisted.scripts.twistd import run; run()"]


# -- systems -----------------------------------------------------------------


class System:
    """One system under test, started fresh by start() and gone after stop()."""

    name = "?"
    #: front: the one port clients use; None for direct (clients use targets)
    front: int | None = None

    def __init__(self, workdir: Path, slots: int) -> None:
        self.workdir = workdir
        self.slots = slots
        self.procs: list[Proc] = []
        self.backends: list[int] = []
        self.rss_pids: dict[str, int] = {}

    @property
    def targets(self) -> list[int]:
        return [self.front] if self.front else self.backends

    def _spawn(self, name, argv, **kw) -> Proc:
        proc = Proc(name, argv, self.workdir, **kw)
        self.procs.append(proc)
        return proc

    def start_backends(self) -> None:
        procs = []
        for i in range(self.slots):
            port = free_port()
            procs.append((port, self._spawn(
                f"{self.name}-backend{i}",
                [PY, str(HERE / "backend.py"), str(port), "--app-dir", str(HERE)],
            )))
        for port, proc in procs:
            wait_port(port, 15, proc)
            self.backends.append(port)

    def start(self) -> "System":
        raise NotImplementedError

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop(grace=3.0)
        self.procs.clear()


class Direct(System):
    name = "direct"

    def start(self):
        self.start_backends()
        for port in self.backends:
            probe(port)
        self.rss_pids = {"server": self.procs[0].pid}
        return self


class Container(System):
    """
    pothead's worker container (the Site its slots serve, N threads) on a
    port of its own, no hub: pothead's overhead minus this is the hub's.
    """

    name = "container"

    def start(self):
        port = free_port()
        proc = self._spawn("container", [
            PY, str(HERE / "container.py"), str(port), "--threads", str(self.slots),
            "--app-dir", str(HERE),
        ], cwd=REPO)
        wait_port(port, 30, proc)
        probe(port)
        self.front = port
        self.rss_pids = {"container": proc.pid}
        return self


class HAProxy(System):
    name = "haproxy"

    def start(self):
        self.start_backends()
        self.front = free_port()
        servers = "\n".join(
            f"    server s{i} {HOST}:{port} maxconn 1" for i, port in enumerate(self.backends)
        )
        cfg = self.workdir / "haproxy.cfg"
        # haproxy wants two descriptors per connection and may not raise
        # its limit past ours: size maxconn to fit.
        fds = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        maxconn = max(min(40000, (fds - 200) // 2), 100)
        cfg.write_text(f"""\
global
    nbthread 1
    maxconn {maxconn}
    tune.bufsize 16384

defaults
    mode http
    timeout connect 5s
    timeout client 600s
    timeout server 600s
    timeout queue 600s
    timeout http-keep-alive 600s
    # Drop a queued request whose client left, as pothead does.
    option abortonclose

frontend fe
    bind {HOST}:{self.front}
    maxconn {maxconn}
    default_backend be

backend be
    balance roundrobin
{servers}
""")
        proc = self._spawn("haproxy", ["haproxy", "-db", "-f", str(cfg)])
        wait_port(self.front, 15, proc)
        probe(self.front)
        self.rss_pids = {"haproxy": proc.pid}
        return self


class RoundRobin(System):
    name = "roundrobin"

    def start(self):
        self.start_backends()
        self.front = free_port()
        prefix = self.workdir / "nginx"
        prefix.mkdir(exist_ok=True)
        servers = "\n".join(f"        server {HOST}:{port};" for port in self.backends)
        cfg = prefix / "nginx.conf"
        cfg.write_text(f"""\
daemon off;
master_process on;
worker_processes 1;
user root;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 40000; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 600s;
    upstream backends {{
{servers}
        keepalive 64;
    }}
    server {{
        listen {HOST}:{self.front} backlog=4096;
        client_max_body_size 0;
        location / {{
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 600s;
            proxy_send_timeout 600s;
        }}
    }}
}}
""")
        proc = self._spawn("nginx", ["nginx", "-p", str(prefix), "-c", str(cfg)])
        wait_port(self.front, 15, proc)
        probe(self.front)
        self.rss_pids = {"nginx-master": proc.pid}
        # The worker process does the proxying; find it as our child's child.
        try:
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            if children:
                self.rss_pids = {"nginx": int(children[0])}
        except OSError:
            pass
        return self


#: ``twistd pothead-hub --help`` per source tree: a baseline may lack options.
_HUB_HELP: dict[Path, str] = {}


def hub_limit_options(twistd: list[str], tree: Path, env: dict | None) -> list[str]:
    """
    Raise the hub's queue and body limits (where this version has them) so
    that the memory and big-body measurements are not refused: the default
    queue bound is below the 10,000 queued jobs measured.
    """
    if tree not in _HUB_HELP:
        p = subprocess.run(twistd + ["pothead-hub", "--help"], capture_output=True, text=True,
                           cwd=tree, env=env, timeout=60)
        _HUB_HELP[tree] = p.stdout + p.stderr
    help_text = _HUB_HELP[tree]
    out = []
    if "--max-queue" in help_text:
        out += ["--max-queue", "100000"]
    if "--max-body-size" in help_text:
        out += ["--max-body-size", str(4 << 30)]
    if "--queue-timeout" in help_text:
        out += ["--queue-timeout", "600"]
    return out


class Pothead(System):
    name = "pothead"
    #: the source tree the hub and worker run from, and their environment
    #: (None: ours, which puts this working tree first on PYTHONPATH)
    tree: Path = REPO
    env: dict | None = None

    def serving(self) -> list[str]:
        """What the worker serves: the benchmark app, in its own threads."""
        return ["--app", "app:app", "--app-dir", str(HERE)]

    def hub_options(self) -> list[str]:
        """The hub's options beyond its ports, access log and limits."""
        return []

    def start(self):
        self.front = free_port()
        wport = free_port()
        twistd = twistd_command()
        hub = self._spawn(f"{self.name}-hub", twistd + [
            "-n", "--pidfile=", "-l", "-", "pothead-hub",
            "--consumer", f"tcp:{self.front}:interface={HOST}",
            "--worker", f"tcp:{wport}:interface={HOST}",
            "--access-log", str(self.workdir / "access.log"), *self.hub_options(),
        ] + hub_limit_options(twistd, self.tree, self.env), cwd=self.tree, env=self.env)
        wait_port(wport, 30, hub)
        wait_port(self.front, 30, hub)
        worker = self._spawn(f"{self.name}-worker", twistd + [
            "-n", "--pidfile=", "-l", "-", "pothead-worker", *self.serving(),
            "--hub", f"tcp:{HOST}:{wport}", "--slots", str(self.slots),
        ], cwd=self.tree, env=self.env)
        deadline = time.monotonic() + 30
        while True:
            if not worker.alive():
                raise RuntimeError(f"pothead worker exited early:\n{worker.log_text()[-2000:]}")
            if not hub.alive():
                raise RuntimeError(f"pothead hub exited early:\n{hub.log_text()[-2000:]}")
            if hub.log_text().count("attached to pool default") >= self.slots:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("pothead worker slots did not attach within 30s")
            time.sleep(0.05)
        probe(self.front)
        self.hub, self.worker = hub, worker
        self.rss_pids = {"hub": hub.pid, "worker": worker.pid}
        return self


SYSTEM_CLASSES = {"direct": Direct, "container": Container, "haproxy": HAProxy,
                  "roundrobin": RoundRobin, "pothead": Pothead}


def base_name(name: str) -> str:
    """The suite system a name runs: pothead for a baseline pothead@<sha>."""
    return name.partition("@")[0]


def system_order(name: str) -> tuple[int, str]:
    """Sort key: the suite's order, a baseline right after pothead."""
    return SYSTEMS.index(base_name(name)), name


def resolve_rev(rev: str) -> tuple[str, str]:
    """The full and short sha of a git revision of this repository."""
    def git(*argv):
        return subprocess.run(["git", "-C", str(REPO), *argv], capture_output=True, text=True,
                              check=True, timeout=30).stdout.strip()
    sha = git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    return sha, git("rev-parse", "--short", sha)


def baseline_env(tree: Path) -> dict[str, str]:
    """
    Our environment with `tree` first on PYTHONPATH and this working tree
    off it, so that a baseline's twistd imports pothead and finds the
    twistd plugins there: PYTHONPATH precedes site-packages, where the
    editable install's link tree to this working tree sits.
    """
    keep = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
            if p and Path(p).resolve() != REPO]
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(tree)] + keep))


def check_imports_from(tree: Path, env: dict) -> str:
    """
    Where a child with `env` imports pothead and its twistd plugins from;
    raises unless both are inside `tree`, as a comparison of the working
    tree with itself would look like a valid A/B run.
    """
    p = subprocess.run(
        [PY, "-c", "import pothead, twisted.plugins.pothead_plugins as p; "
                   "print(pothead.__file__); print(p.__file__)"],
        cwd=tree, env=env, capture_output=True, text=True, timeout=60)
    files = p.stdout.split()
    if p.returncode != 0 or len(files) != 2 or not all(
            Path(f).resolve().is_relative_to(tree.resolve()) for f in files):
        raise RuntimeError(f"baseline imports pothead from {files or p.stderr[-2000:]}, not {tree}")
    return files[0]


def baseline_system(sha: str, short: str, workroot: Path) -> type[Pothead]:
    """
    The Pothead system at commit `sha`: its tree extracted with git archive
    (the repository's working tree and index stay untouched), the hub and
    worker run from there, serving the same app from this benchmarks/.
    """
    tree = workroot / f"baseline-{short}"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", sha], capture_output=True,
                             check=True, timeout=120).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True, timeout=120)
    env = baseline_env(tree)
    print(f"# baseline pothead@{short}: {sha} in {tree}, pothead from {check_imports_from(tree, env)}",
          flush=True)
    return type("Baseline", (Pothead,), {"name": f"pothead@{short}", "tree": tree, "env": env})


def repeat_order(names: list[str], baseline: str | None, rep: int) -> list[str]:
    """
    The systems in the order repeat `rep` runs them: a baseline right next
    to pothead, first on even repeats and second on odd ones, so that drift
    on a shared machine hits both alike; the others keep their place.
    """
    if baseline is None:
        return names
    pair = [baseline, "pothead"] if rep % 2 == 0 else ["pothead", baseline]
    return [n for name in names if name != baseline
            for n in (pair if name == "pothead" else [name])]

# -- helpers -----------------------------------------------------------------


def run_loadgen(mode: str, spec: dict, timeout: float) -> dict:
    out = subprocess.run(
        [PY, LOADGEN, mode, "-"], input=json.dumps(spec) + "\n", capture_output=True,
        text=True, timeout=timeout,
    )
    if out.returncode != 0:
        raise RuntimeError(f"loadgen {mode} failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def pct(values, q: float):
    """Percentile q (0..100) by linear interpolation; None when empty."""
    xs = sorted(v for v in values if v is not None)
    if not xs:
        return None
    k = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def med(values):
    xs = [v for v in values if v is not None]
    return statistics.median(xs) if xs else None


def workload(seed: int, util: float, dist: str, n: int, slots: int, mean_ms: float):
    """Seeded Poisson arrivals and job times; the same (seed, util) gives the
    same arrival instants for both distributions."""
    rate = util * slots / (mean_ms / 1000.0)
    arr_rng = random.Random(f"arrivals/{seed}/{util}")
    job_rng = random.Random(f"jobs/{seed}/{util}")
    t = 0.0
    arrivals, jobs = [], []
    for _ in range(n):
        t += arr_rng.expovariate(rate)
        arrivals.append(t)
        if dist == "exp":
            jobs.append(job_rng.expovariate(1.0 / mean_ms) / 1000.0)
        else:
            jobs.append(mean_ms / 1000.0)
    return arrivals, jobs


def ideal_fifo(arrivals, jobs, slots: int):
    """Response times of a zero-overhead central FIFO queue with `slots`
    identical servers (M/G/c, first come first served): each job, in arrival
    order, starts on the server that frees up first."""
    free = [0.0] * slots
    out = []
    for a, s in zip(arrivals, jobs, strict=True):
        i = min(range(slots), key=free.__getitem__)
        start = max(a, free[i])
        free[i] = start + s
        out.append(free[i] - a)
    return out


# -- measurements ------------------------------------------------------------


def m_scheduling(system: System, cfg: dict, repeat: int, seed: int) -> dict:
    if system.front is None:
        return {}
    out = {}
    for util in cfg["utilisations"]:
        for dist in cfg["dists"]:
            arrivals, jobs = workload(seed + 7919 * repeat, util, dist, cfg["sched_requests"],
                                      cfg["slots"], cfg["mean_ms"])
            schedule = [[a, f"/sleep?ms={j * 1000:.3f}"] for a, j in zip(arrivals, jobs, strict=True)]
            span = arrivals[-1] + 30
            r = run_loadgen("open", {"port": system.front, "schedule": schedule,
                                     "timeout": 30.0, "deadline": span}, timeout=span + 30)
            ideal = ideal_fifo(arrivals, jobs, cfg["slots"])
            lat = r["latency"]
            p99 = pct(lat, 99)
            ip99 = pct(ideal, 99)
            out[f"{dist}@{int(util * 100)}"] = {
                "p50_ms": ms(pct(lat, 50)), "p90_ms": ms(pct(lat, 90)), "p99_ms": ms(p99),
                "ideal_p50_ms": ms(pct(ideal, 50)), "ideal_p90_ms": ms(pct(ideal, 90)),
                "ideal_p99_ms": ms(ip99),
                "efficiency": (ip99 / p99) if p99 else None,
                "requests": len(schedule),
                "failed": sum(r["errors"].values()),
                "errors": r["errors"],
                "client_lag_max_ms": ms(r["lag_max"]),
            }
            time.sleep(0.2)
    return out


def ms(x):
    return None if x is None else x * 1000.0


def m_overhead(system: System, cfg: dict) -> dict:
    out = {}
    for ka in (True, False):
        r = run_loadgen("seq", {"port": system.targets[0], "path": "/tiny", "count": cfg["seq_count"],
                                "warmup": cfg["seq_warmup"], "keepalive": ka, "deadline": 60},
                        timeout=90)
        key = "keepalive" if ka else "close"
        out[key] = {"p50_ms": ms(pct(r["latency"], 50)), "p99_ms": ms(pct(r["latency"], 99)),
                    "requests": len(r["latency"]), "failed": sum(r["errors"].values()),
                    "errors": r["errors"]}
    return out


WRK_RE = re.compile(r"Requests/sec:\s+([\d.]+)")


def m_throughput(system: System, cfg: dict) -> dict:
    conns = cfg["tp_connections"]
    dur = cfg["tp_duration"]
    targets = system.targets
    cpu0 = {k: cpu_seconds(pid) for k, pid in system.rss_pids.items()}
    t0 = time.monotonic()
    res = _throughput(system, conns, dur, targets)
    elapsed = time.monotonic() - t0
    # Share of one core each proxy process used while the load ran.
    res["cpu_pct"] = {k: 100.0 * (cpu_seconds(pid) - cpu0[k]) / elapsed
                      for k, pid in system.rss_pids.items()}
    return res


def _throughput(system: System, conns: int, dur: float, targets: list[int]) -> dict:
    if shutil.which("wrk"):
        per = max(conns // len(targets), 1)
        procs = [subprocess.Popen(
            ["wrk", "-t1", f"-c{per}", f"-d{max(dur, 1):g}s", "--timeout", "5s",
             f"http://{HOST}:{port}/tiny"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for port in targets]
        rate, failed, notes = 0.0, 0, []
        for p in procs:
            text, _ = p.communicate(timeout=dur + 30)
            m = WRK_RE.search(text)
            rate += float(m.group(1)) if m else 0.0
            for pattern in (r"Non-2xx or 3xx responses:\s+(\d+)",):
                mm = re.search(pattern, text)
                if mm:
                    failed += int(mm.group(1))
            se = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
            if se:
                failed += sum(int(x) for x in se.groups())
                notes.append(se.group(0))
        return {"tool": "wrk", "rps": rate, "connections": conns, "failed": failed, "notes": notes}
    r = run_loadgen("closed", {"ports": targets, "path": "/tiny", "clients": conns, "duration": dur,
                               "warmup": 0.2, "keepalive": True, "timeout": 5},
                    timeout=dur + 60)
    return {"tool": "loadgen", "rps": r["rate"], "connections": conns,
            "failed": sum(r["errors"].values()), "errors": r["errors"]}


def m_short(system: System, cfg: dict) -> dict:
    dur = cfg["short_duration"]
    r = run_loadgen("closed", {"ports": system.targets, "path": f"/sleep?ms={cfg['short_ms']:g}",
                               "clients": cfg["short_clients"], "duration": dur, "warmup": 0.3,
                               "keepalive": True, "timeout": 10},
                    timeout=dur + 60)
    ideal = cfg["slots"] / (cfg["short_ms"] / 1000.0)
    return {"rps": r["rate"], "ideal_rps": ideal, "ratio": r["rate"] / ideal,
            "p50_ms": ms(pct(r["latency"], 50)), "p99_ms": ms(pct(r["latency"], 99)),
            "failed": sum(r["errors"].values()), "errors": r["errors"]}


def m_bigbody(system: System, cfg: dict) -> dict:
    out = {}
    n = cfg["big_bytes"]
    for direction in ("down", "up"):
        time.sleep(0.3)
        base = {k: rss_kb(pid) for k, pid in system.rss_pids.items()}
        sampler = RssSampler(system.rss_pids)
        sampler.start()
        try:
            r = run_loadgen("big", {"port": system.targets[0], "direction": direction, "bytes": n,
                                    "timeout": 300}, timeout=600)
        finally:
            peak = sampler.stop()
        r["rss_base_mb"] = {k: v / 1024 for k, v in base.items()}
        r["rss_growth_mb"] = {k: (peak[k] - base[k]) / 1024 for k in base}
        out[direction] = r
    return out


def m_memory(system: System, cfg: dict) -> dict:
    """
    RSS of the proxy process (the hub, haproxy) holding `mem_jobs` queued
    requests: one slot is busy on a long sleep, every other request waits.
    Per job = RSS growth / connections the proxy accepted.
    """
    k = cfg["mem_jobs"]
    name, pid = next(iter(system.rss_pids.items()))
    loadgen.run_seq({"port": system.front, "path": "/tiny", "count": 50, "keepalive": False})
    time.sleep(0.5)
    base = rss_kb(pid)
    base_fds = fd_count(pid)
    hold_ms = cfg.get("mem_hold_ms", 60000)
    answered: dict = {}
    hold = subprocess.Popen(
        [PY, LOADGEN, "hold", json.dumps({"port": system.front, "path": f"/sleep?ms={hold_ms}",
                                          "connections": k, "batch": 250,
                                          "deadline": hold_ms / 1000.0})],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = json.loads(hold.stdout.readline() or "{}")
        t_ready = time.monotonic()
        # Wait until the proxy holds every connection it will take and its
        # RSS settles.
        deadline = time.monotonic() + 30
        last = -1
        stable = 0
        while time.monotonic() < deadline:
            time.sleep(0.25)
            now = rss_kb(pid)
            if abs(now - last) < 64:
                stable += 1
                if stable >= 4:
                    break
            else:
                stable = 0
            last = now
        peak = rss_kb(pid)
        accepted = fd_count(pid) - base_fds
        settle_s = time.monotonic() - t_ready
        t0 = time.monotonic()
        hold.stdin.write("close\n")
        hold.stdin.flush()
        out, _ = hold.communicate(timeout=60)
        try:
            answered = json.loads(out.strip().splitlines()[-1]).get("answered", {})
        except (ValueError, IndexError):
            answered = {}
        # How long the proxy takes to let go of every queued job once their
        # consumers are gone.
        release_s = None
        while time.monotonic() - t0 < 60:
            if fd_count(pid) <= base_fds + 5:
                release_s = time.monotonic() - t0
                break
            time.sleep(0.05)
    finally:
        if hold.poll() is None:
            hold.kill()
            hold.wait()
    held = ready.get("ready", 0)
    # Requests answered while held (a 503 for a full queue, or the one the
    # slot served) were not queued.
    jobs = (min(held, accepted) if accepted > 0 else held) - sum(answered.values())
    return {
        "process": name,
        "connections": held,
        "jobs": jobs,
        "failed_connections": ready.get("failed", k),
        "answered_while_held": answered,
        "rss_base_mb": base / 1024,
        "rss_mb": peak / 1024,
        "per_job_kb": (peak - base) / max(jobs, 1),
        "settle_s": settle_s,
        "release_s": release_s,
    }


# -- orchestration -----------------------------------------------------------


def run_suite(args) -> dict:
    cfg = QUICK if args.quick else FULL
    systems = [s for s in SYSTEMS if not args.only or s in args.only or not set(args.only) & set(SYSTEMS)]
    measurements = [m for m in MEASUREMENTS
                    if not args.only or m in args.only or not set(args.only) & set(MEASUREMENTS)]
    available = {}
    for name in systems:
        tool = {"haproxy": "haproxy", "roundrobin": "nginx"}.get(name)
        if tool and not shutil.which(tool):
            print(f"!! skipping {name}: {tool} is not installed", flush=True)
            continue
        available[name] = SYSTEM_CLASSES[name]
    workroot = Path(tempfile.mkdtemp(prefix="pothead-bench-"))
    print(f"# work dir (logs, configs): {workroot}", flush=True)
    baseline = None
    if args.baseline:
        cls = baseline_system(*args.baseline_commit, workroot)
        available[cls.name] = cls
        baseline = cls.name
    runs = []  # one dict per repeat
    t_suite = time.monotonic()
    for rep in range(args.repeat):
        run = {}
        runs.append(run)
        for name in repeat_order(list(available), baseline, rep):
            cls = available[name]
            run[name] = {}
            latency_ms = [m for m in ("scheduling", "overhead", "throughput", "short")
                          if m in measurements and not (m == "scheduling" and name in ("direct", "container"))]
            groups = []
            if latency_ms:
                groups.append((latency_ms, cfg["slots"]))
            if "bigbody" in measurements and base_name(name) in cfg["big_systems"]:
                groups.append((["bigbody"], 1))
            if "memory" in measurements and base_name(name) in cfg["mem_systems"]:
                groups.append((["memory"], 1))
            for group, slots in groups:
                workdir = workroot / f"r{rep}-{name}-{group[0]}"
                workdir.mkdir()
                system = cls(workdir, slots)
                try:
                    system.start()
                    for m in group:
                        t1 = time.monotonic()
                        print(f"[{rep + 1}/{args.repeat}] {name:10s} {m:10s} ...", end=" ", flush=True)
                        try:
                            if m == "scheduling":
                                res = m_scheduling(system, cfg, rep, args.seed)
                            elif m == "overhead":
                                res = m_overhead(system, cfg)
                            elif m == "throughput":
                                res = m_throughput(system, cfg)
                            elif m == "short":
                                res = m_short(system, cfg)
                            elif m == "bigbody":
                                res = m_bigbody(system, cfg)
                            else:
                                res = m_memory(system, cfg)
                        except Exception as e:  # noqa: BLE001 - record and go on
                            res = {"error": f"{type(e).__name__}: {e}"}
                        run[name][m] = res
                        print(f"{time.monotonic() - t1:.1f}s {brief(m, res)}", flush=True)
                except Exception as e:  # noqa: BLE001
                    print(f"!! {name} failed to start: {e}", flush=True)
                    for m in group:
                        run[name].setdefault(m, {"error": f"start: {e}"})
                finally:
                    system.stop()
                    if base_name(name) == "pothead":
                        scan_pothead_logs(system, run[name])
    summary = summarise(runs, cfg)
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "mode": "quick" if args.quick else "full",
        "repeat": args.repeat,
        "seed": args.seed,
        "config": cfg,
        "elapsed_s": time.monotonic() - t_suite,
        "workdir": str(workroot),
        "summary": summary,
        "runs": runs,
    }
    if baseline:
        result["baseline"] = {
            "rev": args.baseline, "sha": args.baseline_commit[0], "name": baseline,
            "tree": str(available[baseline].tree),
            "first": [next(n for n in repeat_order(list(available), baseline, rep)
                           if base_name(n) == "pothead") for rep in range(args.repeat)],
            "ratios": ab_compare(runs, cfg, baseline),
        }
    return result


def scan_pothead_logs(system: System, into: dict) -> None:
    """Count warnings and tracebacks in the hub and worker logs."""
    notes = into.setdefault("log_notes", {})
    for proc in (getattr(system, "hub", None), getattr(system, "worker", None)):
        if proc is None:
            continue
        text = proc.log_text()
        lines = [line for line in text.splitlines()
                 if "Traceback" in line or "Unhandled" in line or " failed " in line
                 or "broke off" in line or "[-] " in line and "error" in line.lower()]
        if lines:
            notes.setdefault(proc.name, []).extend(lines[:20])


def brief(m: str, res: dict) -> str:
    if "error" in res:
        return "ERROR " + res["error"]
    if m == "scheduling":
        return " ".join(f"{k}:eff={v['efficiency']:.3f}" if v["efficiency"] else f"{k}:FAILED"
                        for k, v in res.items())
    if m == "overhead":
        return " ".join(f"{k}:p50={v['p50_ms']:.3f}ms" if v["p50_ms"] else f"{k}:FAILED"
                        for k, v in res.items())
    if m == "throughput":
        return f"{res['rps']:.0f} req/s failed={res['failed']}"
    if m == "short":
        return f"{res['rps']:.0f} req/s ratio={res['ratio']:.3f} failed={res['failed']}"
    if m == "bigbody":
        return " ".join(f"{d}:{r.get('mb_per_s', 0):.0f}MB/s" if "mb_per_s" in r else f"{d}:{r.get('error')}"
                        for d, r in res.items())
    if m == "memory":
        return f"{res['jobs']} jobs, {res['per_job_kb']:.2f} kB/job"
    return ""


def _collect(runs, system, *path):
    out = []
    for run in runs:
        node = run.get(system, {})
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
            if node is None:
                break
        out.append(node if isinstance(node, (int, float)) else None)
    return out


def summarise(runs, cfg) -> dict:
    """Medians over the repeats, per system and measurement."""
    systems = sorted({s for run in runs for s in run}, key=system_order)
    s = {}
    for name in systems:
        d = s[name] = {}
        for dist in cfg["dists"]:
            for util in cfg["utilisations"]:
                key = f"{dist}@{int(util * 100)}"
                row = {f: med(_collect(runs, name, "scheduling", key, f))
                       for f in ("p50_ms", "p90_ms", "p99_ms", "ideal_p99_ms", "efficiency", "failed")}
                if row["p99_ms"] is not None:
                    d.setdefault("scheduling", {})[key] = row
        for ka in ("keepalive", "close"):
            row = {f: med(_collect(runs, name, "overhead", ka, f)) for f in ("p50_ms", "p99_ms", "failed")}
            if row["p50_ms"] is not None:
                d.setdefault("overhead", {})[ka] = row
        tp = med(_collect(runs, name, "throughput", "rps"))
        if tp is not None:
            cpu = {}
            for run in runs:
                for k, v in run.get(name, {}).get("throughput", {}).get("cpu_pct", {}).items():
                    cpu.setdefault(k, []).append(v)
            d["throughput"] = {"rps": tp, "failed": med(_collect(runs, name, "throughput", "failed")),
                               "cpu_pct": {k: med(v) for k, v in cpu.items()}}
        sh = med(_collect(runs, name, "short", "ratio"))
        if sh is not None:
            d["short"] = {"rps": med(_collect(runs, name, "short", "rps")), "ratio": sh,
                          "p99_ms": med(_collect(runs, name, "short", "p99_ms")),
                          "failed": med(_collect(runs, name, "short", "failed"))}
        for direction in ("down", "up"):
            mbs = med(_collect(runs, name, "bigbody", direction, "mb_per_s"))
            if mbs is not None:
                growth = {}
                for run in runs:
                    g = run.get(name, {}).get("bigbody", {}).get(direction, {}).get("rss_growth_mb", {})
                    for k, v in g.items():
                        growth.setdefault(k, []).append(v)
                d.setdefault("bigbody", {})[direction] = {
                    "mb_per_s": mbs, "rss_growth_mb": {k: med(v) for k, v in growth.items()},
                    "ok": all(run.get(name, {}).get("bigbody", {}).get(direction, {}).get("ok", False)
                              for run in runs if "bigbody" in run.get(name, {}))}
        pj = med(_collect(runs, name, "memory", "per_job_kb"))
        if pj is not None:
            d["memory"] = {"per_job_kb": pj, "jobs": med(_collect(runs, name, "memory", "jobs")),
                           "rss_mb": med(_collect(runs, name, "memory", "rss_mb")),
                           "release_s": med(_collect(runs, name, "memory", "release_s"))}
    # Added latency over direct, from the medians.
    base = s.get("direct", {}).get("overhead", {})
    for d in s.values():
        for ka, row in d.get("overhead", {}).items():
            b = base.get(ka)
            if b:
                row["added_p50_ms"] = row["p50_ms"] - b["p50_ms"]
                row["added_p99_ms"] = row["p99_ms"] - b["p99_ms"]
    s["_targets"] = targets(s, cfg)
    return s


def targets(s, cfg) -> list[dict]:
    """Issue 4's targets for pothead, checked against this run."""
    p, h = s.get("pothead", {}), s.get("haproxy", {})
    out = []

    def add(what, value, goal, ok):
        out.append({"target": what, "value": value, "goal": goal,
                    "met": None if ok is None else bool(ok)})

    for key, row in p.get("scheduling", {}).items():
        dist, util = key.split("@")
        goal = 0.93 if util == "95" and dist == "exp" else 0.99
        if dist != "exp" and util == "95":
            goal = None
        hv = h.get("scheduling", {}).get(key, {}).get("efficiency")
        eff = row["efficiency"]
        ok = (goal is None or eff >= goal) and (hv is None or eff >= hv)
        add(f"scheduling efficiency {key}", eff,
            f">= {goal if goal else '-'} and >= haproxy ({hv:.3f})" if hv else f">= {goal}", ok)
    if "short" in p:
        hv = h.get("short", {}).get("ratio")
        add("short jobs ratio", p["short"]["ratio"], f">= 0.92 and > haproxy ({hv:.3f})" if hv else ">= 0.92",
            p["short"]["ratio"] >= 0.92 and (hv is None or p["short"]["ratio"] > hv))
    for ka in ("keepalive", "close"):
        pr = p.get("overhead", {}).get(ka, {})
        hr = h.get("overhead", {}).get(ka, {})
        if "added_p50_ms" in pr and "added_p50_ms" in hr:
            add(f"added p50 over direct ({ka})", pr["added_p50_ms"],
                f"<= haproxy + 0.15 ms ({hr['added_p50_ms'] + 0.15:.3f})",
                pr["added_p50_ms"] <= hr["added_p50_ms"] + 0.15)
    if "throughput" in p and "throughput" in h:
        add("throughput vs haproxy", p["throughput"]["rps"] / h["throughput"]["rps"], ">= 0.8",
            p["throughput"]["rps"] >= 0.8 * h["throughput"]["rps"])
    for direction, row in p.get("bigbody", {}).items():
        hub_growth = row["rss_growth_mb"].get("hub")
        size = f"{cfg['big_bytes'] / 1e9:g} GB {'response' if direction == 'down' else 'upload'}"
        add(f"{size} MB/s", row["mb_per_s"], ">= 200", row["mb_per_s"] >= 200 and row["ok"])
        if hub_growth is not None:
            add(f"{size} hub RSS growth MB", hub_growth, "< 50", hub_growth < 50)
    if "memory" in p:
        add("hub kB per queued job", p["memory"]["per_job_kb"], "<= 4", p["memory"]["per_job_kb"] <= 4)
    return out


def machine() -> dict:
    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for tool, argv in (("haproxy", ["haproxy", "-v"]), ("nginx", ["nginx", "-v"]), ("wrk", ["wrk", "-v"])):
        if shutil.which(tool):
            try:
                p = subprocess.run(argv, capture_output=True, text=True, timeout=5)
                versions[tool] = (p.stdout + p.stderr).strip().splitlines()[0]
            except Exception:  # noqa: BLE001
                pass
    try:
        import twisted
        versions["twisted"] = twisted.__version__
    except ImportError:
        pass
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "pothead"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        versions["pothead"] = head + ("+uncommitted" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return {"cpus": os.cpu_count(), "cpu": model, "kernel": platform.release(),
            "python": platform.python_version(), "versions": versions}


# -- table -------------------------------------------------------------------


def f(x, spec=".2f", none="-"):
    return none if x is None else format(x, spec)


def table(result: dict) -> str:
    s = result["summary"]
    cfg = result["config"]
    names = sorted((n for n in s if not n.startswith("_")), key=system_order)
    nw = max([11] + [len(n) for n in names])  # the name column, wider for a baseline
    lines = []
    w = lines.append
    mach = result["machine"]
    w(f"pothead benchmarks — {result['date']} — {result['mode']} run, median of {result['repeat']} "
      f"— {mach['cpus']} CPUs ({mach['cpu']}), Python {mach['python']}, "
      f"pothead {mach['versions'].get('pothead', '?')}")
    w("")
    sched_keys = [f"{d}@{int(u * 100)}" for d in cfg["dists"] for u in cfg["utilisations"]]
    if any("scheduling" in s[n] for n in names):
        w(f"1. Scheduling: open-loop Poisson, {cfg['slots']} slots, mean job {cfg['mean_ms']:g} ms, "
          f"{cfg['sched_requests']} requests/point; latency ms; eff = ideal p99 / p99")
        w(f"   {'point':10s} {'system':{nw}s} {'p50':>8s} {'p90':>8s} {'p99':>8s} {'ideal p99':>10s} {'eff':>6s} {'fail':>5s}")
        for key in sched_keys:
            for n in names:
                row = s[n].get("scheduling", {}).get(key)
                if row:
                    w(f"   {key:10s} {n:{nw}s} {f(row['p50_ms'], '8.1f')} {f(row['p90_ms'], '8.1f')} "
                      f"{f(row['p99_ms'], '8.1f')} {f(row['ideal_p99_ms'], '10.1f')} "
                      f"{f(row['efficiency'], '6.3f')} {f(row['failed'], '5.0f')}")
        w("")
    if any("overhead" in s[n] for n in names):
        w("2. Overhead: one client, sequential GET /tiny; ms; added = minus direct")
        w(f"   {'system':{nw}s} {'ka p50':>8s} {'ka p99':>8s} {'+p50':>7s} {'+p99':>7s} "
          f"{'new p50':>8s} {'new p99':>8s} {'+p50':>7s} {'+p99':>7s}")
        for n in names:
            o = s[n].get("overhead")
            if not o:
                continue
            ka, cl = o.get("keepalive", {}), o.get("close", {})
            w(f"   {n:{nw}s} {f(ka.get('p50_ms'), '8.3f')} {f(ka.get('p99_ms'), '8.3f')} "
              f"{f(ka.get('added_p50_ms'), '7.3f')} {f(ka.get('added_p99_ms'), '7.3f')} "
              f"{f(cl.get('p50_ms'), '8.3f')} {f(cl.get('p99_ms'), '8.3f')} "
              f"{f(cl.get('added_p50_ms'), '7.3f')} {f(cl.get('added_p99_ms'), '7.3f')}")
        w("   (ka = one keep-alive connection; new = a new connection per request)")
        w("")
    if any("throughput" in s[n] for n in names):
        w(f"3. Throughput: GET /tiny, {cfg['tp_connections']} keep-alive connections, "
          f"{cfg['tp_duration']:g} s; req/s")
        for n in names:
            t = s[n].get("throughput")
            if t:
                cpu = ", ".join(f"{k} {v:.0f}%" for k, v in t.get("cpu_pct", {}).items())
                w(f"   {n:{nw}s} {t['rps']:10.0f}   failed {f(t['failed'], '.0f')}   CPU of one core: {cpu}")
        w("")
    if any("short" in s[n] for n in names):
        w(f"4. Short jobs: {cfg['short_ms']:g} ms sleep, {cfg['slots']} slots, {cfg['short_clients']} "
          f"closed-loop clients; ideal {cfg['slots'] / cfg['short_ms'] * 1000:.0f} req/s")
        for n in names:
            t = s[n].get("short")
            if t:
                w(f"   {n:{nw}s} {t['rps']:8.0f} req/s  ratio {t['ratio']:.3f}  p99 {f(t['p99_ms'], '.1f')} ms  "
                  f"failed {f(t['failed'], '.0f')}")
        w("")
    if any("bigbody" in s[n] for n in names):
        w(f"5. Big bodies: {cfg['big_bytes'] / 1e9:g} GB; MB/s (10^6 B/s) and peak RSS growth of each process")
        for n in names:
            for direction, row in s[n].get("bigbody", {}).items():
                growth = ", ".join(f"{k} +{v:.1f} MB" for k, v in row["rss_growth_mb"].items())
                w(f"   {n:{nw}s} {'response' if direction == 'down' else 'upload':8s} "
                  f"{row['mb_per_s']:7.0f} MB/s  {growth}{'' if row['ok'] else '  INCOMPLETE'}")
        w("")
    if any("memory" in s[n] for n in names):
        w(f"6. Memory with {cfg['mem_jobs']} queued jobs (1 slot busy on a long sleep)")
        for n in names:
            m = s[n].get("memory")
            if m:
                w(f"   {n:{nw}s} {m['per_job_kb']:6.2f} kB/job  (RSS {m['rss_mb']:.0f} MB with "
                  f"{m['jobs']:.0f} queued; all released {f(m['release_s'], '.2f')} s after they left)")
        w("")
    w("Ratios (pothead vs others):")
    for line in ratios(s, cfg):
        w("   " + line)
    w("")
    w("Issue 4 targets for pothead:")
    for t in s.get("_targets", []):
        mark = {True: "MET ", False: "MISS", None: "  ? "}[t["met"]]
        w(f"   [{mark}] {t['target']}: {f(t['value'], '.3f')}  (goal {t['goal']})")
    notes = []
    for run in result["runs"]:
        for name, d in run.items():
            for m, res in d.items():
                if isinstance(res, dict) and "error" in res:
                    notes.append(f"{name} {m}: {res['error']}")
            held = d.get("memory", {}).get("answered_while_held") if isinstance(d.get("memory"), dict) else None
            if held:
                notes.append(f"{name} memory: requests answered while they should have been queued: {held}")
            for proc, lns in d.get("log_notes", {}).items():
                notes.extend(f"{proc} log: {ln}" for ln in lns[:5])
    if notes:
        w("")
        w("Problems seen:")
        for n in sorted(set(notes))[:40]:
            w("   " + n[:300])
    if "baseline" in result:
        w("")
        lines.extend(ab_lines(result["baseline"], result["repeat"]))
    return "\n".join(lines)


def ratios(s, cfg) -> list[str]:
    p = s.get("pothead", {})
    out = []
    for other in ("haproxy", "roundrobin"):
        o = s.get(other, {})
        parts = []
        for key, row in p.get("scheduling", {}).items():
            orow = o.get("scheduling", {}).get(key)
            if orow and orow["p99_ms"]:
                parts.append(f"{key} {row['p99_ms'] / orow['p99_ms']:.2f}")
        if parts:
            out.append(f"p99 pothead/{other}: " + ", ".join(parts) + "  (<1 = pothead faster)")
    for other in ("haproxy", "roundrobin", "direct", "container"):
        o = s.get(other, {})
        if "throughput" in p and "throughput" in o:
            out.append(f"throughput pothead/{other}: {p['throughput']['rps'] / o['throughput']['rps']:.2f}")
    for other in ("haproxy", "roundrobin", "direct", "container"):
        o = s.get(other, {})
        if "short" in p and "short" in o:
            out.append(f"short jobs pothead/{other}: {p['short']['ratio'] / o['short']['ratio']:.2f}")
    for other in ("haproxy", "roundrobin", "container"):
        o = s.get(other, {})
        for ka in ("keepalive", "close"):
            pr, orow = p.get("overhead", {}).get(ka), o.get("overhead", {}).get(ka)
            if pr and orow and "added_p50_ms" in pr and "added_p50_ms" in orow:
                out.append(f"added p50 ({ka}) pothead - {other}: "
                           f"{pr['added_p50_ms'] - orow['added_p50_ms']:+.3f} ms")
    o = s.get("haproxy", {})
    if "memory" in p and "memory" in o:
        out.append(f"memory per queued job pothead/haproxy: {p['memory']['per_job_kb'] / o['memory']['per_job_kb']:.2f}")
    for direction in ("down", "up"):
        pr = p.get("bigbody", {}).get(direction)
        orow = o.get("bigbody", {}).get(direction)
        if pr and orow:
            out.append(f"{cfg['big_bytes'] / 1e9:g} GB {'response' if direction == 'down' else 'upload'} MB/s pothead/haproxy: "
                       f"{pr['mb_per_s'] / orow['mb_per_s']:.2f}")
    return out


#: How A/B figures print, by unit.
AB_FORMAT = {"": ".3f", "ms": ".3f", "req/s": ".0f", "MB/s": ".0f", "kB/job": ".2f"}


def ab_figures(cfg) -> list[tuple[str, str, tuple[str, ...]]]:
    """(label, unit, path in a repeat's results) of every figure an A/B run compares."""
    points = [f"{d}@{int(u * 100)}" for d in cfg["dists"] for u in cfg["utilisations"]]
    out = [(f"scheduling {key} efficiency", "", ("scheduling", key, "efficiency")) for key in points]
    out += [(f"overhead {ka} p50", "ms", ("overhead", ka, "p50_ms")) for ka in ("keepalive", "close")]
    out += [("throughput", "req/s", ("throughput", "rps")), ("short jobs", "req/s", ("short", "rps"))]
    out += [(f"bigbody {'response' if d == 'down' else 'upload'}", "MB/s", ("bigbody", d, "mb_per_s"))
            for d in ("down", "up")]
    out.append(("memory", "kB/job", ("memory", "per_job_kb")))
    return out


def _minus(xs, ys):
    return [None if x is None or y is None else x - y for x, y in zip(xs, ys, strict=False)]


def ab_compare(runs, cfg, baseline: str) -> list[dict]:
    """
    pothead against its baseline, figure by figure: the medians over the
    repeats, their ratio, and the per-repeat pairs, which show whether a
    difference holds in every repeat or rests on one.  Overhead is the
    latency added over direct in the same repeat when direct ran: the
    client and the direct hop are common to both and would dilute the
    ratio.
    """
    rows = []
    for label, unit, path in ab_figures(cfg):
        cur, base = _collect(runs, "pothead", *path), _collect(runs, baseline, *path)
        direct = _collect(runs, "direct", *path)
        if path[0] == "overhead" and any(v is not None for v in direct):
            label = label.replace("p50", "added p50")
            cur, base = _minus(cur, direct), _minus(base, direct)
        mc, mb = med(cur), med(base)
        if mc is not None and mb is not None:
            rows.append({"figure": label, "unit": unit, "current": mc, "baseline": mb,
                         "ratio": mc / mb if mb else None, "pairs": [list(p) for p in zip(cur, base, strict=False)]})
    return rows


def ab_lines(ab: dict, repeat: int) -> list[str]:
    """The A/B comparison as printed: a line per figure, the pairs on it."""
    out = [f"A/B: pothead (this working tree) vs {ab['name']} ({ab['rev']}), median of {repeat}; "
           "ratio = this tree / baseline (ms, kB: < 1 is better; req/s, MB/s, efficiency: > 1); "
           "pairs = this tree/baseline per repeat"]
    for row in ab["ratios"]:
        spec = AB_FORMAT[row["unit"]]
        unit = f" {row['unit']}" if row["unit"] else ""
        pairs = "  ".join(f"{f(c, spec)}/{f(b, spec)}" for c, b in row["pairs"])
        out.append(f"A/B {row['figure']}: {row['current']:{spec}}{unit} vs {row['baseline']:{spec}}{unit} "
                   f"({ab['name']}) ratio {f(row['ratio'], '.3f')}  pairs: {pairs}")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description="pothead benchmark suite")
    parser.add_argument("--quick", action="store_true", help="smoke pass: tiny counts, a few seconds")
    parser.add_argument("--repeat", type=int, default=None, help="repeats; medians are reported (default 3, 1 with --quick)")
    parser.add_argument("--only", action="append", default=[],
                        help=f"restrict to systems {SYSTEMS} and/or measurements {MEASUREMENTS}; "
                             "repeatable or comma-separated")
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--baseline", metavar="REV",
                        help="also run pothead at git revision REV, interleaved with this tree's, "
                             "and print their ratios (see README: A/B runs)")
    parser.add_argument("--output", default=str(HERE / "results" / "latest.json"))
    args = parser.parse_args()
    args.only = [x for item in args.only for x in item.split(",") if x]
    unknown = set(args.only) - set(SYSTEMS) - set(MEASUREMENTS)
    if unknown:
        parser.error(f"unknown --only names: {sorted(unknown)}")
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.baseline:
        named = set(args.only) & set(SYSTEMS)
        if named and "pothead" not in named:
            parser.error("--baseline compares with pothead: add --only pothead")
        try:
            args.baseline_commit = resolve_rev(args.baseline)
        except (OSError, subprocess.SubprocessError):
            parser.error(f"--baseline {args.baseline}: not a commit of {REPO}")
    # Run the pothead of this working tree, whatever an (editable) install
    # last linked: every child inherits this.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    # 10,000 open connections need more descriptors than the usual 1024.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    atexit.register(stop_all)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    result = run_suite(args)
    text = table(result)
    print()
    print(text)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    (out.with_suffix(".txt")).write_text(text + "\n")
    print(f"\nwrote {out} (work dir with logs: {result['workdir']})")
    errors = [f"{name} {k}" for run in result["runs"] for name, d in run.items()
              for k, res in d.items() if k != "log_notes" and isinstance(res, dict) and "error" in res]
    if errors:
        print(f"!! {len(errors)} measurement(s) failed: {', '.join(sorted(set(errors)))}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
