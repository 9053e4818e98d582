"""
A plain WSGI app with one route per behaviour the fidelity tests compare.

Every path not listed in L{FidelityApp.routes} is answered by the echo
route, so arbitrary paths (percent-encoding and all) can be echoed.
"""

from __future__ import annotations

import hashlib
import json
import struct
import threading
import time
from urllib.parse import parse_qs

#: Seconds a gated response waits for its test before giving up.
GATE_WAIT = 10.0

#: Request headers that frame the body.  The hub re-frames every request
#: body it forwards (it buffers the body, then sends it with a length), so
#: these are reported as the body's length instead of as headers.
FRAMING = ("HTTP_CONTENT_LENGTH", "HTTP_TRANSFER_ENCODING")

#: The headers a proxy in front of the app may add; echoed in the
#: X-Echo-Forwarded response header, so that they can be checked and then
#: set aside without changing the body or its length.
FORWARDED = ("HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_PROTO", "HTTP_X_FORWARDED_HOST")


def _read_body(environ) -> bytes:
    """
    The request body, read as most apps read it: C{CONTENT_LENGTH} bytes
    in one call (a file's read returns fewer only at its end), or to the
    end when there is no length.
    """
    length = environ.get("CONTENT_LENGTH")
    if length:
        return environ["wsgi.input"].read(int(length))
    return environ["wsgi.input"].read()


def _json(data) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode("utf-8")


def request_view(environ, body: bytes) -> dict:
    """
    What the app saw of a request, minus what differs on purpose behind a
    proxy (socket ports, the protocol version the proxy speaks, framing and
    forwarding headers).
    """
    return {
        "method": environ["REQUEST_METHOD"],
        "script_name": environ.get("SCRIPT_NAME", ""),
        "path_info": environ.get("PATH_INFO", ""),
        "query_string": environ.get("QUERY_STRING", ""),
        "content_type": environ.get("CONTENT_TYPE", ""),
        "content_length": environ.get("CONTENT_LENGTH", ""),
        "remote_addr": environ.get("REMOTE_ADDR", ""),
        "server_name": environ.get("SERVER_NAME", ""),
        "url_scheme": environ["wsgi.url_scheme"],
        "headers": [
            [key, value]
            for key, value in environ.items()
            if key.startswith("HTTP_") and key not in FRAMING + FORWARDED
        ],
        "body_length": len(body),
        "body_sha256": hashlib.sha256(body).hexdigest(),
    }


def forwarded_view(environ) -> dict:
    """
    The forwarding headers the app saw, by short name.
    """
    return {
        key[len("HTTP_X_FORWARDED_") :].lower(): environ[key] for key in FORWARDED if key in environ
    }


def pattern_block(index: int, size: int) -> bytes:
    """
    Deterministic filler for generated bodies; the first bytes number the
    block, so a reordered or repeated block changes the hash.
    """
    base = bytes(range(256)) * (size // 256 + 1)
    return (struct.pack(">Q", index) + base)[:size]


class FidelityApp:
    """
    The WSGI app under test.

    :ivar gate: released by a test to let C{/_/gate} finish its body.
    """

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.routes = {
            "/_/hash": self.hash,
            "/_/cookies": self.cookies,
            "/_/stream": self.stream,
            "/_/big": self.big,
            "/_/slow": self.slow,
            "/_/gate": self.gated,
            "/_/headlen": self.head_length,
        }

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path.startswith("/_/status/"):
            return self.status(environ, start_response)
        if path.startswith("/_/nobody/"):
            return self.nobody(environ, start_response)
        return self.routes.get(path, self.echo)(environ, start_response)

    def echo(self, environ, start_response):
        """
        The request as the app saw it, as JSON.
        """
        body = _json(request_view(environ, _read_body(environ)))
        start_response(
            "200 OK",
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                ("X-Echo-Forwarded", _json(forwarded_view(environ)).decode("ascii")),
            ],
        )
        return [body]

    def hash(self, environ, start_response):
        """
        Only the method and the request body's length and hash.
        """
        data = _read_body(environ)
        body = _json(
            {
                "method": environ["REQUEST_METHOD"],
                "body_length": len(data),
                "body_sha256": hashlib.sha256(data).hexdigest(),
            }
        )
        start_response(
            "200 OK",
            [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
        )
        return [body]

    def status(self, environ, start_response):
        """
        C{/_/status/<code>/<reason phrase>}: that status, a short body.
        """
        code, _, reason = environ["PATH_INFO"][len("/_/status/") :].partition("/")
        body = f"status {code}\n".encode()
        headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
        if code == "201":
            headers.append(("Location", "/things/42"))
        start_response(f"{code} {reason}", headers)
        return [body]

    def nobody(self, environ, start_response):
        """
        C{/_/nobody/204}, C{/_/nobody/304}, C{/_/nobody/304-length}:
        answers that never carry a body.
        """
        kind = environ["PATH_INFO"][len("/_/nobody/") :]
        if kind == "204":
            start_response("204 No Content", [("X-Deleted", "yes")])
        elif kind == "304":
            start_response(
                "304 Not Modified",
                [("ETag", '"v1"'), ("Cache-Control", "max-age=60"), ("Vary", "Accept")],
            )
        else:
            # RFC 9110 section 8.6: a 304 may say how long the 200 would be.
            start_response("304 Not Modified", [("ETag", '"v1"'), ("Content-Length", "1234")])
        return []

    def head_length(self, environ, start_response):
        """
        Declares a length and, for HEAD, sends no body, as frameworks do.
        """
        body = b"x" * 5000
        start_response(
            "200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
        )
        return [] if environ["REQUEST_METHOD"] == "HEAD" else [body]

    def cookies(self, environ, start_response):
        """
        Repeated response headers, interleaved with others.
        """
        body = b"cookies\n"
        start_response(
            "200 OK",
            [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Set-Cookie", "a=1; Path=/"),
                ("X-Other", "between"),
                ("Set-Cookie", "b=2; HttpOnly; SameSite=Lax"),
                ("Set-Cookie", "c=3; Expires=Wed, 21 Oct 2037 07:28:00 GMT; Secure"),
                ("Vary", "Accept"),
                ("Vary", "Cookie"),
                ("x-lower-case", "Mixed Value"),
                ("X-Empty", ""),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
            ],
        )
        return [body]

    def stream(self, environ, start_response):
        """
        A body of unknown length, in a few pieces.
        """
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (b"piece %d\n" % i for i in range(5))

    def big(self, environ, start_response):
        """
        C{/_/big?size=N&chunk=M}: N generated bytes in M-byte pieces, no length.
        """
        query = parse_qs(environ.get("QUERY_STRING", ""))
        size = int(query["size"][0])
        chunk = int(query.get("chunk", ["262144"])[0])
        start_response("200 OK", [("Content-Type", "application/octet-stream")])

        def body():
            sent, index = 0, 0
            while sent < size:
                block = pattern_block(index, min(chunk, size - sent))
                sent += len(block)
                index += 1
                yield block

        return body()

    def slow(self, environ, start_response):
        """
        C{/_/slow?n=N&delay=S}: N pieces, sleeping S seconds before each.
        """
        query = parse_qs(environ.get("QUERY_STRING", ""))
        count = int(query["n"][0])
        delay = float(query["delay"][0])
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-Slow", "1")])

        def body():
            for i in range(count):
                time.sleep(delay)
                yield b"tick %d\n" % i

        return body()

    def gated(self, environ, start_response):
        """
        Sends C{first}, then waits for the test to release the gate.
        """
        start_response("200 OK", [("Content-Type", "text/plain")])

        def body():
            yield b"first\n"
            released = self.gate.wait(GATE_WAIT)
            self.gate.clear()
            yield b"last\n" if released else b"gate never opened\n"

        return body()


def gated(calls: list, gate: threading.Event):
    """A WSGI app that notes each call and, for /hold, waits for C{gate} (bounded)."""

    def app(environ, start_response):
        calls.append(environ["PATH_INFO"])
        if environ["PATH_INFO"] == "/hold":
            gate.wait(10)
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    return app
