"""
A plain single-threaded HTTP/1.1 WSGI server: the backend of the ``direct``,
``haproxy`` and ``roundrobin`` systems.

One process, one thread, one request at a time: exactly one "slot".  Idle
keep-alive connections wait in a selector, so a proxy that keeps idle
connections to it never blocks it; once a request's head is in, the
connection is served to completion (body read, app called, response
written) with blocking I/O before the next one is looked at.  Requests
that arrive meanwhile wait in the kernel, first come first served.

Usage: python backend.py PORT [--app-dir DIR] [--app module:app]
"""

from __future__ import annotations

import argparse
import importlib
import io
import selectors
import signal
import socket
import sys

MAX_HEAD = 64 * 1024


class BodyReader(io.RawIOBase):
    """
    ``wsgi.input``: exactly Content-Length bytes, from what was already
    buffered and then from the socket.
    """

    def __init__(self, sock: socket.socket, buffered: bytes, length: int) -> None:
        self._sock = sock
        self._buf = buffered
        self.remaining = length

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self.remaining <= 0:
            return b""
        if size is None or size < 0 or size > self.remaining:
            size = self.remaining
        parts = []
        need = size
        if self._buf:
            take = self._buf[:need]
            self._buf = self._buf[need:]
            parts.append(take)
            need -= len(take)
        while need > 0:
            data = self._sock.recv(min(need, 1 << 20))
            if not data:
                raise ConnectionError("client went away mid-body")
            parts.append(data)
            need -= len(data)
        self.remaining -= size
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def readline(self, size: int = -1) -> bytes:
        out = bytearray()
        while self.remaining > 0 and (size < 0 or len(out) < size):
            c = self.read(1)
            out += c
            if c == b"\n":
                break
        return bytes(out)

    def drain(self) -> None:
        while self.remaining > 0:
            self.read(1 << 20)

    def leftover(self) -> bytes:
        return self._buf


class Server:
    def __init__(self, port: int, app) -> None:
        self.app = app
        self.port = port
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(4096)
        self.listener.setblocking(False)
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.listener, selectors.EVENT_READ, None)
        self.buffers: dict[socket.socket, bytes] = {}
        self.running = True

    def serve(self) -> None:
        while self.running:
            try:
                events = self.sel.select(timeout=0.5)
            except InterruptedError:
                continue
            for key, _ in events:
                if key.data is None:
                    self._accept()
                else:
                    self._readable(key.fileobj)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.setblocking(False)
            self.buffers[conn] = b""
            self.sel.register(conn, selectors.EVENT_READ, True)

    def _close(self, conn: socket.socket) -> None:
        try:
            self.sel.unregister(conn)
        except (KeyError, ValueError):
            pass
        self.buffers.pop(conn, None)
        conn.close()

    def _readable(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not data:
            self._close(conn)
            return
        buf = self.buffers[conn] + data
        # Serve every complete request head buffered on this connection.
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    self._close(conn)
                    return
                self.buffers[conn] = buf
                return
            head, buf = buf[:end], buf[end + 4:]
            conn.setblocking(True)
            try:
                keep, buf = self._handle(conn, head, buf)
            except OSError:
                self._close(conn)
                return
            conn.setblocking(False)
            if not keep:
                self._close(conn)
                return

    def _handle(self, conn: socket.socket, head: bytes, rest: bytes):
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, target, version = lines[0].split(" ", 2)
        except ValueError:
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return False, b""
        path, _, query = target.partition("?")
        environ = {
            "REQUEST_METHOD": method,
            "SCRIPT_NAME": "",
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": str(self.port),
            "SERVER_PROTOCOL": version,
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": False,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
        }
        connection = ""
        chunked = False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            value = value.strip()
            if name == "content-length":
                environ["CONTENT_LENGTH"] = value
            elif name == "content-type":
                environ["CONTENT_TYPE"] = value
            else:
                if name == "connection":
                    connection = value.lower()
                elif name == "transfer-encoding" and "chunked" in value.lower():
                    chunked = True
                key = "HTTP_" + name.upper().replace("-", "_")
                if key in environ:
                    environ[key] += "," + value
                else:
                    environ[key] = value
        if chunked:
            conn.sendall(b"HTTP/1.1 411 Length Required\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return False, b""
        keep = (version == "HTTP/1.1" and "close" not in connection) or (
            version == "HTTP/1.0" and "keep-alive" in connection
        )
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        body = BodyReader(conn, rest, length)
        environ["wsgi.input"] = body
        state = {}

        def start_response(status, headers, exc_info=None):
            state["status"] = status
            state["headers"] = headers
            return lambda data: None

        result = self.app(environ, start_response)
        try:
            head_out = ["HTTP/1.1 " + state["status"]]
            has_length = False
            for name, value in state["headers"]:
                if name.lower() == "content-length":
                    has_length = True
                head_out.append(f"{name}: {value}")
            if not has_length:
                keep = False
            if not keep:
                head_out.append("Connection: close")
            elif version == "HTTP/1.0":
                head_out.append("Connection: keep-alive")
            out = ("\r\n".join(head_out) + "\r\n\r\n").encode("latin-1")
            first = True
            for data in result:
                if first:
                    # Head and a small body in one segment.
                    if len(data) < 65536:
                        conn.sendall(out + data)
                        out = None
                        first = False
                        continue
                    conn.sendall(out)
                    out = None
                    first = False
                if method != "HEAD":
                    conn.sendall(data)
            if out is not None:
                conn.sendall(out)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        body.drain()
        return keep, body.leftover()


def load_app(spec: str, app_dir: str | None):
    """
    The WSGI app named C{module:attribute}, imported from C{app_dir} first.
    """
    if app_dir:
        sys.path.insert(0, app_dir)
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("port", type=int)
    parser.add_argument("--app", default="app:app")
    parser.add_argument("--app-dir", default=None)
    args = parser.parse_args()
    server = Server(args.port, load_app(args.app, args.app_dir))

    def stop(signum, frame):
        # Exit even from inside a long /sleep.
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"backend listening on 127.0.0.1:{args.port}", flush=True)
    server.serve()


if __name__ == "__main__":
    main()
