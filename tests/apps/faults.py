"""
A WSGI app for the process fault tests: it records every invocation in a
file (so several worker processes can be counted together) and sleeps as
asked, or answers with as many bytes as asked (``?bytes=N``, in 64 KiB
pieces).

``POTHEAD_TEST_LOG`` names the file; ``?sleep=SECONDS`` the work, scaled
by ``POTHEAD_TEST_SLEEP_SCALE`` (default 1) so that one worker can be slow
and another quick; ``?gate=PATH`` holds the answer until the file PATH
exists (at most L{GATE_WAIT} seconds), so that a test decides when a slot
is free again.
"""

import os
import time
from pathlib import Path
from urllib.parse import parse_qs

#: The longest a gated request waits for its file, in seconds.
GATE_WAIT = 120.0


def app(environ, start_response):
    query = parse_qs(environ.get("QUERY_STRING", ""))
    body = environ["wsgi.input"].read()
    with open(os.environ["POTHEAD_TEST_LOG"], "a") as log:
        log.write(f"{os.getpid()} {environ['REQUEST_METHOD']} {environ['PATH_INFO']}\n")
    scale = float(os.environ.get("POTHEAD_TEST_SLEEP_SCALE", "1"))
    time.sleep(float(query.get("sleep", ["0"])[0]) * scale)
    if "gate" in query:
        gate, deadline = Path(query["gate"][0]), time.monotonic() + GATE_WAIT
        while not gate.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    if "bytes" in query:
        size = int(query["bytes"][0])
        start_response("200 OK", [("Content-Length", str(size))])
        return (b"b" * min(65536, size - at) for at in range(0, size, 65536))
    answer = b"pid %d got %d bytes" % (os.getpid(), len(body))
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(answer)))])
    return [answer]
