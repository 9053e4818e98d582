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

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

sys.path.insert(0, str(HERE))
import bench  # noqa: E402
import use_venv  # noqa: E402, F401  (re-executes with the venv's Python if need be)
from bench import (  # noqa: E402
    HOST,
    PY,
    Pothead,
    free_port,
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


def main() -> int:
    _, cfg, repeat, workroot = bench.quick_or_full(
        "sidecar worker (gunicorn behind it) vs --app", "sidecar")
    bench.one_against_another({"--app": Pothead, "sidecar": Sidecar}, cfg, repeat, workroot,
                              "sidecar vs --app")
    return 0


if __name__ == "__main__":
    sys.exit(main())
