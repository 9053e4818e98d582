"""
Load generators for the benchmark, run by ``bench.py`` in a process of
their own so that the systems measured never share an event loop with the
client.  Each mode reads a JSON spec (argument 2, or ``-`` for stdin) and
prints one JSON object.  Every mode is bounded in request count and in
time, and talks to 127.0.0.1 only.

Modes:

``open``    open-loop arrivals: request i is sent at ``start + t[i]``
            whatever happened to earlier ones, each on a fresh connection,
            so the client never queues; latency runs from the *scheduled*
            send time to the last response byte.
``closed``  C clients, each on its own keep-alive connection (or a fresh one
            per request), sending the next request when the last answer is
            complete, for a duration or a request budget.
``seq``     one blocking client, one request at a time: the latency probe.
``big``     one large download or upload, timed.
``hold``    open K connections that each send one request and wait; print
            ``READY`` when all are sent, close them all on a line on stdin
            (or at the deadline).
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time

HOST = "127.0.0.1"


def request_bytes(method: str, path: str, port: int, keepalive: bool, body_len: int | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{port}"]
    if not keepalive:
        lines.append("Connection: close")
    if body_len is not None:
        lines.append(f"Content-Length: {body_len}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def parse_head(head: bytes):
    """Status code, content length (or None), chunked, close."""
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = None
    chunked = False
    close = lines[0].startswith(b"HTTP/1.0")
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
        elif name == b"connection":
            v = value.strip().lower()
            if b"close" in v:
                close = True
            elif b"keep-alive" in v:
                close = False
    return status, length, chunked, close


# -- asyncio client ----------------------------------------------------------


async def read_response(reader: asyncio.StreamReader):
    head = await reader.readuntil(b"\r\n\r\n")
    status, length, chunked, close = parse_head(head[:-4])
    if chunked:
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length is not None:
        if length:
            await reader.readexactly(length)
    else:
        await reader.read()
        close = True
    return status, close


async def one_shot(port: int, path: str, timeout: float):
    """A fresh connection, one request, the whole response; (status, error)."""
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(request_bytes("GET", path, port, keepalive=False))
            status, _ = await read_response(reader)
            return status, None
    except Exception as e:  # noqa: BLE001 - every failure is a data point
        return None, f"{type(e).__name__}: {e}"
    finally:
        if writer is not None:
            writer.close()


async def run_open(spec):
    """
    spec: port, schedule [[t, path], ...] (seconds from start), timeout,
    deadline (seconds for the whole run).  An entry [t, path, port] goes
    to that port instead of spec's (several hubs fed by one arrival
    process; ``port`` may then be left out).
    """
    loop = asyncio.get_running_loop()
    default_port = spec.get("port")
    timeout = spec.get("timeout", 30.0)
    schedule = spec["schedule"]
    n = len(schedule)
    latency = [None] * n
    status = [None] * n
    lag = [0.0] * n
    errors = {}
    start = loop.time() + 0.05

    async def fire(i, at, path, port):
        sent = loop.time()
        lag[i] = sent - at
        code, err = await one_shot(port, path, timeout)
        done = loop.time()
        status[i] = code
        if err is None and code == 200:
            latency[i] = done - at
        else:
            key = err or f"status {code}"
            errors[key] = errors.get(key, 0) + 1

    tasks = []
    for i, (t, path, *to) in enumerate(schedule):
        at = start + t
        delay = at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(fire(i, at, path, to[0] if to else default_port)))
    remaining = max(spec.get("deadline", 120.0) - (loop.time() - start), 1.0)
    done, pending = await asyncio.wait(tasks, timeout=remaining)
    for t in pending:
        t.cancel()
    if pending:
        errors["deadline"] = len(pending)
    lags = sorted(lag)
    return {
        "latency": latency,
        "status": status,
        "errors": errors,
        "lag_p50": lags[len(lags) // 2] if lags else 0.0,
        "lag_max": lags[-1] if lags else 0.0,
    }


async def run_closed(spec):
    """
    spec: ports (clients spread over them round-robin), path, clients,
    duration, max_requests, keepalive, timeout.
    """
    loop = asyncio.get_running_loop()
    ports = spec["ports"]
    path = spec["path"]
    keepalive = spec.get("keepalive", True)
    duration = spec["duration"]
    budget = spec.get("max_requests", 10**7)
    timeout = spec.get("timeout", 10.0)
    warmup = spec.get("warmup", 0.0)
    latencies = []
    errors = {}
    counter = {"sent": 0, "ok": 0}
    t_start = loop.time()
    t_measure = t_start + warmup
    t_end = t_measure + duration

    async def client(port):
        req = request_bytes("GET", path, port, keepalive)
        reader = writer = None
        while loop.time() < t_end and counter["sent"] < budget:
            counter["sent"] += 1
            t0 = loop.time()
            try:
                async with asyncio.timeout(timeout):
                    if writer is None:
                        reader, writer = await asyncio.open_connection(HOST, port)
                    writer.write(req)
                    code, close = await read_response(reader)
                if close or not keepalive:
                    writer.close()
                    reader = writer = None
            except Exception as e:  # noqa: BLE001
                key = f"{type(e).__name__}: {e}"
                errors[key] = errors.get(key, 0) + 1
                if writer is not None:
                    writer.close()
                reader = writer = None
                continue
            t1 = loop.time()
            if code != 200:
                errors[f"status {code}"] = errors.get(f"status {code}", 0) + 1
            elif t0 >= t_measure and t1 <= t_end:
                counter["ok"] += 1
                latencies.append(t1 - t0)
        if writer is not None:
            writer.close()

    clients = [client(ports[i % len(ports)]) for i in range(spec["clients"])]
    await asyncio.wait_for(asyncio.gather(*clients), timeout=warmup + duration + timeout + 5)
    return {
        "completed": counter["ok"],
        "elapsed": duration,
        "rate": counter["ok"] / duration,
        "latency": latencies,
        "errors": errors,
    }


async def run_hold(spec):
    """
    spec: port, path, connections, batch, deadline.  Prints a JSON line
    with the count of connections held once every request is written, then
    waits for a line on stdin (or the deadline) and reports how many of
    them had been answered meanwhile (refused, or served).
    """
    loop = asyncio.get_running_loop()
    port = spec["port"]
    req = request_bytes("GET", spec["path"], port, keepalive=True)
    held = []
    failed = 0
    answered = {}
    deadline = loop.time() + spec.get("deadline", 120.0)
    batch = spec.get("batch", 200)
    total = spec["connections"]

    async def watch(reader):
        first = await reader.read(64)
        if first:
            status = first.split(b" ", 2)[1].decode("ascii", "replace") if b" " in first else "?"
            answered[status] = answered.get(status, 0) + 1
        else:
            answered["closed"] = answered.get("closed", 0) + 1

    async def open_one():
        r, w = await asyncio.open_connection(HOST, port)
        w.write(req)
        return r, w

    for first in range(0, total, batch):
        results = await asyncio.gather(
            *(open_one() for _ in range(min(batch, total - first))), return_exceptions=True
        )
        for r in results:
            if isinstance(r, BaseException):
                failed += 1
            else:
                held.append((r[1], asyncio.ensure_future(watch(r[0]))))
        await asyncio.sleep(0.01)
        if loop.time() > deadline:
            break
    for w, _ in held:
        await w.drain()
    print(json.dumps({"ready": len(held), "failed": failed}), flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        await asyncio.wait_for(reader.readline(), timeout=max(deadline - loop.time(), 1.0))
    except asyncio.TimeoutError:
        pass
    early = dict(answered)
    for w, task in held:
        task.cancel()
        w.transport.abort()
    await asyncio.sleep(0.1)
    return {"held": len(held), "failed": failed, "answered": early}


# -- blocking client ---------------------------------------------------------


def _read_blocking(sock: socket.socket, buf: bytearray):
    """Read one response from sock; buf holds bytes already received and is
    left holding what follows the response.  Returns (status, close)."""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            break
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed before response head")
        buf += data
    status, length, chunked, close = parse_head(bytes(buf[:end]))
    del buf[: end + 4]
    if chunked:
        while True:
            while b"\r\n" not in buf:
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("closed mid-chunk")
                buf += data
            line_end = buf.find(b"\r\n")
            size = int(bytes(buf[:line_end]).split(b";")[0], 16)
            need = line_end + 2 + size + 2
            while len(buf) < need:
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("closed mid-chunk")
                buf += data
            del buf[:need]
            if size == 0:
                break
    elif length is not None:
        while len(buf) < length:
            data = sock.recv(max(65536, length - len(buf)))
            if not data:
                raise ConnectionError("closed mid-body")
            buf += data
        del buf[:length]
    else:
        while True:
            data = sock.recv(65536)
            if not data:
                break
        close = True
    return status, close


def _connect(port: int, timeout: float) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def run_seq(spec):
    """
    spec: port, path, count, warmup, keepalive, deadline.  Latency of each
    request, connect included when not keep-alive.
    """
    port = spec["port"]
    keepalive = spec["keepalive"]
    req = request_bytes("GET", spec["path"], port, keepalive)
    deadline = time.monotonic() + spec.get("deadline", 60.0)
    latencies = []
    errors = {}
    sock = None
    buf = bytearray()
    total = spec.get("warmup", 0) + spec["count"]
    for i in range(total):
        if time.monotonic() > deadline:
            errors["deadline"] = total - i
            break
        t0 = time.perf_counter()
        try:
            if sock is None:
                sock = _connect(port, 10.0)
                buf = bytearray()
            sock.sendall(req)
            code, close = _read_blocking(sock, buf)
        except OSError as e:
            errors[f"{type(e).__name__}: {e}"] = errors.get(f"{type(e).__name__}: {e}", 0) + 1
            if sock is not None:
                sock.close()
            sock = None
            continue
        if close or not keepalive:
            sock.close()
            sock = None
        t1 = time.perf_counter()
        if code != 200:
            errors[f"status {code}"] = errors.get(f"status {code}", 0) + 1
        elif i >= spec.get("warmup", 0):
            latencies.append(t1 - t0)
    if sock is not None:
        sock.close()
    return {"latency": latencies, "errors": errors}


def run_big(spec):
    """
    spec: port, direction ("down" or "up"), bytes, timeout.
    """
    port = spec["port"]
    n = spec["bytes"]
    chunk = 1 << 20
    sock = _connect(port, spec.get("timeout", 300.0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    t0 = time.perf_counter()
    received = 0
    status = None
    try:
        if spec["direction"] == "down":
            sock.sendall(request_bytes("GET", f"/bytes?n={n}", port, keepalive=False))
            buf = bytearray()
            while b"\r\n\r\n" not in buf:
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("closed before response head")
                buf += data
            end = buf.find(b"\r\n\r\n")
            status, length, _, _ = parse_head(bytes(buf[:end]))
            received = len(buf) - end - 4
            view = bytearray(chunk)
            while received < (length if length is not None else n):
                got = sock.recv_into(view)
                if not got:
                    break
                received += got
            body_ok = received == n
        else:
            block = b"u" * chunk
            sock.sendall(request_bytes("POST", "/sink", port, keepalive=False, body_len=n))
            sent = 0
            while sent < n:
                piece = block if n - sent >= chunk else block[: n - sent]
                sock.sendall(piece)
                sent += len(piece)
            buf = bytearray()
            status, _ = _read_blocking(sock, buf)
            # _read_blocking consumed the body; ask again for its text.
            body_ok = status == 200
            received = sent
    except OSError as e:
        return {"error": f"{type(e).__name__}: {e}", "elapsed": time.perf_counter() - t0}
    finally:
        sock.close()
    elapsed = time.perf_counter() - t0
    return {
        "status": status,
        "bytes": received,
        "ok": bool(body_ok) and status == 200,
        "elapsed": elapsed,
        "mb_per_s": received / elapsed / 1e6,
    }


def main() -> None:
    mode = sys.argv[1]
    source = sys.argv[2] if len(sys.argv) > 2 else "-"
    if source == "-":
        spec = json.loads(sys.stdin.readline())
    else:
        spec = json.loads(source)
    if mode == "open":
        result = asyncio.run(run_open(spec))
    elif mode == "closed":
        result = asyncio.run(run_closed(spec))
    elif mode == "hold":
        result = asyncio.run(run_hold(spec))
    elif mode == "seq":
        result = run_seq(spec)
    elif mode == "big":
        result = run_big(spec)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
