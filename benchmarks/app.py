"""
The WSGI application every benchmarked system serves.

Endpoints (all GET unless noted; every response carries Content-Length):

- ``/tiny``            2 bytes, ``ok``: the per-request overhead probe.
- ``/sleep?ms=50``     sleep that long, then answer: expensive, non-concurrent
                       work that costs no CPU, so a 2-core machine can run
                       four "slots" of it without contention.
- ``/cpu?ms=20``       burn CPU for that long (wall clock), then answer.
- ``/echo`` (POST)     answer with the request body.
- ``/bytes?n=N``       stream N bytes (default 1 MiB) in 1 MiB chunks.
- ``/sink`` (POST/PUT) read the whole request body in chunks, answer with the
                       byte count.

Nothing here depends on the server hosting it, so the same file runs under
the single-threaded backend of ``benchmarks/backend.py`` and under
``twistd pothead-worker --app app:app --app-dir benchmarks``.
"""

from __future__ import annotations

import time
from urllib.parse import parse_qs

CHUNK = 1 << 20
_BLOCK = b"x" * CHUNK
_MAX_SLEEP_MS = 600_000


def _param(environ, name: str, default: float) -> float:
    values = parse_qs(environ.get("QUERY_STRING", "")).get(name)
    if not values:
        return default
    try:
        return float(values[0])
    except ValueError:
        return default


def _reply(start_response, body: bytes, status: str = "200 OK", kind: str = "text/plain"):
    start_response(status, [("Content-Type", kind), ("Content-Length", str(len(body)))])
    return [body]


def _body_length(environ) -> int:
    try:
        return int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0


def _stream(n: int):
    full, rest = divmod(n, CHUNK)
    for _ in range(full):
        yield _BLOCK
    if rest:
        yield _BLOCK[:rest]


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    method = environ.get("REQUEST_METHOD", "GET")
    if path == "/tiny":
        return _reply(start_response, b"ok")
    if path == "/sleep":
        ms = min(max(_param(environ, "ms", 50.0), 0.0), _MAX_SLEEP_MS)
        time.sleep(ms / 1000.0)
        return _reply(start_response, b"slept %.3f\n" % ms)
    if path == "/cpu":
        ms = min(max(_param(environ, "ms", 20.0), 0.0), _MAX_SLEEP_MS)
        end = time.perf_counter() + ms / 1000.0
        spins = 0
        while time.perf_counter() < end:
            spins += 1
        return _reply(start_response, b"spun %d\n" % spins)
    if path == "/echo":
        stream = environ["wsgi.input"]
        body = stream.read(_body_length(environ)) if _body_length(environ) else b""
        return _reply(start_response, body, kind="application/octet-stream")
    if path == "/bytes":
        n = max(int(_param(environ, "n", CHUNK)), 0)
        start_response(
            "200 OK",
            [("Content-Type", "application/octet-stream"), ("Content-Length", str(n))],
        )
        return _stream(n)
    if path == "/sink":
        if method not in ("POST", "PUT"):
            return _reply(start_response, b"POST a body\n", "405 Method Not Allowed")
        stream = environ["wsgi.input"]
        remaining = _body_length(environ)
        total = 0
        while remaining > 0:
            data = stream.read(min(CHUNK, remaining))
            if not data:
                break
            total += len(data)
            remaining -= len(data)
        return _reply(start_response, b"%d\n" % total)
    return _reply(start_response, b"not found\n", "404 Not Found")
