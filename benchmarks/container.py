"""
pothead's worker container without the hub: the app served on a plain TCP
port by the very server a pothead worker's slots run (pothead's HTTP/1.1
server, pothead's FlowControlledWSGIResource (on twisted.web.wsgi), a thread pool of N
threads).

The ``container`` system of the suite: what pothead would cost if the hub
cost nothing, so that pothead's overhead splits into the container's (the
price of hosting an app through twisted.web.wsgi) and the hub's.

    python container.py PORT --threads N [--app app:app] [--app-dir DIR]
"""

from __future__ import annotations

import argparse

from backend import load_app
from twisted.internet import reactor

from pothead.worker.service import slot_server
from pothead.worker.threads import AppThreads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("port", type=int)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--app", default="app:app")
    parser.add_argument("--app-dir", default=None)
    args = parser.parse_args()
    app = load_app(args.app, args.app_dir)
    pool = AppThreads(args.threads, name="container")
    pool.start()
    reactor.addSystemEventTrigger("during", "shutdown", pool.stop)
    reactor.listenTCP(args.port, slot_server(reactor, pool, app), interface="127.0.0.1")
    print(f"container listening on 127.0.0.1:{args.port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
