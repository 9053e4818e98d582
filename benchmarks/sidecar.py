"""
The sidecar worker against --app (issue 17): the benchmark app served by
the worker's own threads (``--app app:app``) or by gunicorn behind a
sidecar worker (``--upstream http://127.0.0.1:PORT``), through one hub,
with the same slots.

    python benchmarks/sidecar.py [--quick] [--repeat N]

Per repeat, each system is started fresh (hub, worker and, for the
sidecar, gunicorn with one process and as many threads as slots) and
measured as bench.py measures pothead: sequential ``/tiny`` requests on a
kept-alive connection (added latency: p50) and closed-loop ``/tiny``
throughput.  The two take turns going first.  It prints the medians and
the sidecar's figures against --app's: added p50 in milliseconds and the
throughput ratio.  Every process is stopped by its PID.
"""

from __future__ import annotations

import argparse
import atexit
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

sys.path.insert(0, str(HERE))
import bench  # noqa: E402
import use_venv  # noqa: E402, F401  (re-executes with the venv's Python if need be)
from bench import (  # noqa: E402
    FULL,
    HOST,
    PY,
    QUICK,
    Pothead,
    free_port,
    m_overhead,
    m_throughput,
    med,
    wait_port,
)


class Sidecar(Pothead):
    """pothead with a sidecar worker in front of gunicorn serving the same app."""

    name = "sidecar"

    def start(self):
        self.upstream = free_port()
        gunicorn = self._spawn("gunicorn", [
            PY, "-m", "gunicorn", "--bind", f"{HOST}:{self.upstream}", "--workers", "1",
            "--threads", str(self.slots), "--worker-class", "gthread", "--chdir", str(HERE),
            "--log-level", "warning", "app:app",
        ])
        wait_port(self.upstream, 30, gunicorn)
        return super().start()

    def serving(self) -> list[str]:
        return ["--upstream", f"http://{HOST}:{self.upstream}"]


def measure(cls, workdir: Path, cfg: dict) -> dict:
    system = cls(workdir, cfg["slots"])
    try:
        system.start()
        return {"overhead": m_overhead(system, cfg), "throughput": m_throughput(system, cfg)}
    finally:
        system.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description="sidecar worker (gunicorn behind it) vs --app")
    parser.add_argument("--quick", action="store_true", help="smoke pass: few requests, 1 repeat")
    parser.add_argument("--repeat", type=int, default=None, help="repeats (default 5; 1 with --quick)")
    args = parser.parse_args()
    cfg = QUICK if args.quick else FULL
    repeat = args.repeat or (1 if args.quick else 5)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    atexit.register(bench.stop_all)
    signal.signal(signal.SIGTERM, bench._on_signal)
    signal.signal(signal.SIGINT, bench._on_signal)
    workroot = Path(tempfile.mkdtemp(prefix="pothead-sidecar-"))
    print(f"# work dir (logs): {workroot}", flush=True)
    results: dict[str, list[dict]] = {"app": [], "sidecar": []}
    systems = {"app": Pothead, "sidecar": Sidecar}
    started = time.monotonic()
    for rep in range(repeat):
        order = ["app", "sidecar"] if rep % 2 == 0 else ["sidecar", "app"]
        for name in order:
            workdir = workroot / f"r{rep}-{name}"
            workdir.mkdir()
            res = measure(systems[name], workdir, cfg)
            results[name].append(res)
            print(f"[{rep + 1}/{repeat}] {name:7s} keep-alive p50 "
                  f"{res['overhead']['keepalive']['p50_ms']:.3f} ms, /tiny "
                  f"{res['throughput']['rps']:.0f} req/s "
                  f"(failed {res['overhead']['keepalive']['failed'] + res['throughput']['failed']})",
                  flush=True)
    p50 = {k: med([r["overhead"]["keepalive"]["p50_ms"] for r in v]) for k, v in results.items()}
    rps = {k: med([r["throughput"]["rps"] for r in v]) for k, v in results.items()}
    print()
    print(f"sidecar vs --app, {cfg['slots']} slots, median of {repeat} "
          f"({time.monotonic() - started:.0f} s, {bench.machine()['cpus']} CPUs):")
    print(f"  keep-alive p50: --app {p50['app']:.3f} ms, sidecar {p50['sidecar']:.3f} ms: "
          f"added {p50['sidecar'] - p50['app']:+.3f} ms (ratio {p50['sidecar'] / p50['app']:.2f})")
    print(f"  /tiny throughput: --app {rps['app']:.0f} req/s, sidecar {rps['sidecar']:.0f} req/s: "
          f"ratio {rps['sidecar'] / rps['app']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
