"""
POTHEAD 0.4.3's command lines, running the same services as the twistd
plugins:

    python3 -m pothead.server [--main-port P] [--worker-port Q]
    python3 -m pothead.worker [--connect HOST:PORT] [--workers N | --poll-jobs] module:app

Each is translated to the ``twistd -n pothead-hub`` or ``pothead-worker``
command line it stands for, and run as that, in the foreground, logging
to standard output (see docs/migrating.md).
"""

from __future__ import annotations

import os
import sys
from argparse import ArgumentParser
from typing import Sequence

#: twistd's own options for a foreground process, as the 0.4.3 scripts ran.
_FOREGROUND = ["-n", "--pidfile=", "-l", "-"]


def server_argv(argv: Sequence[str]) -> list[str]:
    """
    The twistd command line for 0.4.3's ``pothead.server`` arguments.
    """
    parser = ArgumentParser(prog="python3 -m pothead.server", description="Run PTTH Hub")
    parser.add_argument("--main-port", default=8080, type=int,
                        help="Port for public services")
    parser.add_argument("--worker-port", default=4040, type=int,
                        help="Port where workers should connect")
    args = parser.parse_args(argv)
    return [*_FOREGROUND, "pothead-hub",
            "--consumer", f"tcp:{args.main_port}", "--worker", f"tcp:{args.worker_port}"]


def _hub_endpoint(address: str) -> str:
    host, colon, port = address.rpartition(":")
    if not colon or not port.isdigit() or not host:
        raise ValueError(f"--connect takes host:port, not {address!r}")
    host = host.strip("[]")
    return f"tcp:{host.replace(':', chr(92) + ':')}:{port}"


def worker_argv(argv: Sequence[str], environ: dict[str, str] = os.environ) -> list[str]:
    """
    The twistd command line for 0.4.3's ``pothead.worker`` arguments.
    """
    parser = ArgumentParser(
        prog="python3 -m pothead.worker",
        description="Run WSGI app in sequential `worker` mode",
    )
    parser.add_argument("--connect", default="localhost:4040",
                        help="Load Balancer Hub to connect to [host:port]")
    jobs = parser.add_mutually_exclusive_group()
    jobs.add_argument("--workers", type=int, default=int(environ.get("POTHEAD_WORKERS", 1)),
                      help="Number of workers (default: $POTHEAD_WORKERS, else 1)")
    jobs.add_argument("--poll-jobs", action="store_true",
                      help="Use `app.wait_for_slot` to determine when to pull new jobs")
    parser.add_argument("app", nargs="?", default="pothead.demo:app",
                        help="The WSGI request handler to handle requests")
    args = parser.parse_args(argv)
    try:
        hub = _hub_endpoint(args.connect)
    except ValueError as e:
        parser.error(str(e))
    command = [*_FOREGROUND, "pothead-worker", "--app", args.app, "--hub", hub]
    if args.poll_jobs:
        command += ["--poll-jobs"]
    else:
        command += ["--slots", str(args.workers)]
    return command


def _run_twistd(argv: list[str]) -> None:
    from twisted.scripts.twistd import run

    sys.argv = ["twistd", *argv]
    run()


def server_main() -> None:
    """``python3 -m pothead.server``"""
    _run_twistd(server_argv(sys.argv[1:]))


def worker_main() -> None:
    """``python3 -m pothead.worker``"""
    _run_twistd(worker_argv(sys.argv[1:]))
