"""
Raw-socket peers for end-to-end tests against a real hub process (see
L{tests.processes}): a recording worker that reads what the hub sends with
h11, an HTTP/1.1 parser independent of the hub's own; a scripted worker
that answers with given raw bytes; and a consumer that sends raw bytes and
reads the hub's answers with h11.

Everything runs on plain blocking sockets on 127.0.0.1, in threads, and
every wait is bounded by L{WAIT}.
"""

from __future__ import annotations

import itertools
import select
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Sequence

import h11

from pothead.attach import DETACH_NOTICE, attach_request
from tests.processes import Twistd, start_hub

#: Upper bound, in seconds, on any single wait on the network here.
WAIT = 5.0

#: How every recording worker answers: a complete, persistent response.
OK_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

#: h11's limit on an incomplete head: well above anything the hub sends.
H11_MAX_HEAD = 4 * 1024 * 1024

#: How often a worker thread looks at its stop flag while waiting.
POLL = 0.05

#: How long a recording worker waits for the rest of a request the hub
#: has begun to send before it takes it for a malformed one: the hub
#: sends a request's head and body at once.
STALLED = 2.0


@dataclass(frozen=True)
class Request:
    """
    A request as an h11 server read it.
    """

    method: bytes
    target: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes

    def values(self, name: bytes) -> list[bytes]:
        """Every value of the header C{name} (case-insensitive), in order."""
        return [value for key, value in self.headers if key.lower() == name.lower()]


@dataclass(frozen=True)
class Response:
    """
    A response as an h11 client read it.
    """

    status: int
    reason: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes

    def values(self, name: bytes) -> list[bytes]:
        """Every value of the header C{name} (case-insensitive), in order."""
        return [value for key, value in self.headers if key.lower() == name.lower()]


@dataclass
class Exchange:
    """
    What a consumer connection got back.

    :ivar responses: the complete final responses, in order.
    :ivar heads: the status of every final response head received, the
        head of a response cut off before its end included.
    :ivar closed: whether the hub closed (or reset) the connection.
    :ivar error: why h11 refused the hub's bytes, if it did.
    """

    responses: list[Response] = field(default_factory=list)
    heads: list[int] = field(default_factory=list)
    closed: bool = False
    error: str | None = None

    @property
    def statuses(self) -> list[int]:
        return [response.status for response in self.responses]


@dataclass
class Hub:
    """
    A hub process and its two loopback ports.
    """

    process: Twistd
    consumer_port: int
    worker_port: int

    def log_mark(self) -> int:
        """A position in the hub's log, for L{log_since}."""
        return len(self.process.lines)

    def log_since(self, mark: int) -> str:
        """What the hub logged since C{mark}."""
        return "\n".join(self.process.lines[mark:])

    def stop(self) -> None:
        self.process.stop()


def run_hub(cwd, *argv: str) -> Hub:
    """
    Start a hub process on ephemeral loopback ports.
    """
    process, (consumer_port, worker_port) = start_hub(cwd, *argv)
    return Hub(process, consumer_port, worker_port)


def _attach(port: int, name: str) -> tuple[socket.socket, bytes]:
    """
    Open a slot: connect, attach, read the C{101}.

    :return: the socket, and the bytes read past the C{101}'s head.
    :raise OSError: if the hub cannot be reached or does not switch.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    try:
        sock.sendall(attach_request("hub", "default", None, name))
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"hub closed the attach: {buffer!r}")
            buffer += chunk
        head, _, rest = buffer.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101 "):
            raise ConnectionError(f"attach refused: {head!r}")
    except BaseException:
        sock.close()
        raise
    return sock, rest


def _readable(sock: socket.socket, stopping: threading.Event, timeout: float | None = None) -> bool:
    """
    Wait, a L{POLL} at a time, until C{sock} can be read, C{stopping} is
    set or C{timeout} has passed; return whether it can be read.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while not stopping.is_set() and (deadline is None or time.monotonic() < deadline):
        if select.select([sock], [], [], POLL)[0]:
            return True
    return False


def _recv(sock: socket.socket) -> bytes:
    """Read what is there; a reset reads as the end of the connection."""
    try:
        return sock.recv(65536)
    except OSError:
        return b""


class RecordingWorker:
    """
    Worker slots that record every request the hub sends them, as h11
    reads it, and answer each with L{OK_RESPONSE}.  A slot whose
    connection the hub ends attaches again; bytes h11 refuses are recorded
    in L{errors}, and that slot attaches again too.
    """

    def __init__(self, port: int, slots: int = 1, name: str = "recorder") -> None:
        self._port = port
        self._lock = threading.Lock()
        self._requests: list[Request] = []
        self._errors: list[str] = []
        self._stopping = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(f"{name}/{i}",), daemon=True)
            for i in range(slots)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(WAIT)

    def __len__(self) -> int:
        with self._lock:
            return len(self._requests)

    @property
    def errors(self) -> list[str]:
        """The protocol errors h11 found in what the hub sent, in order."""
        with self._lock:
            return list(self._errors)

    def since(self, mark: int) -> list[Request]:
        """The requests recorded after the first C{mark}."""
        with self._lock:
            return self._requests[mark:]

    def _run(self, name: str) -> None:
        while not self._stopping.is_set():
            try:
                sock, rest = _attach(self._port, name)
            except OSError:
                time.sleep(POLL)
                continue
            with sock:
                try:
                    self._serve(sock, rest)
                except Exception as error:
                    # Recorded, for the test to fail on; the slot attaches again.
                    self._error(f"recording worker failed: {error!r}")

    def _error(self, why: str) -> None:
        with self._lock:
            self._errors.append(f"{why} (after {len(self._requests)} requests)")

    def _serve(self, sock: socket.socket, data: bytes) -> None:
        """
        Serve one attached connection until it ends or the worker stops.
        """
        connection = h11.Connection(h11.SERVER, max_incomplete_event_size=H11_MAX_HEAD)
        if data:
            # (To h11, no bytes mean the end of the connection.)
            connection.receive_data(data)
        request: h11.Request | None = None
        body: list[bytes] = []
        while True:
            try:
                event = connection.next_event()
            except h11.RemoteProtocolError as error:
                self._error(f"{error}")
                return
            if event is h11.NEED_DATA:
                midway = request is not None or bool(connection.trailing_data[0])
                if not _readable(sock, self._stopping, STALLED if midway else None):
                    if midway and not self._stopping.is_set():
                        self._error(f"an incomplete request stalled: "
                                    f"{bytes(connection.trailing_data[0][:200])!r}")
                    return
                connection.receive_data(_recv(sock))
            elif isinstance(event, h11.Request):
                request, body = event, []
            elif isinstance(event, h11.Data):
                body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                recorded = Request(
                    bytes(request.method), bytes(request.target),
                    tuple((bytes(n), bytes(v)) for n, v in request.headers.raw_items()),
                    b"".join(body),
                )
                request = None
                with self._lock:
                    self._requests.append(recorded)
                try:
                    sock.sendall(OK_RESPONSE)
                except OSError:
                    return
                # h11 is told of the answer only to move on to the next
                # request; the bytes sent are the fixed ones.
                try:
                    connection.send(h11.Response(status_code=200, headers=[("Content-Length", "2")]))
                    connection.send(h11.Data(data=b"ok"))
                    connection.send(h11.EndOfMessage())
                    connection.start_next_cycle()
                except h11.LocalProtocolError as error:
                    # A request after which the connection cannot go on (a
                    # CONNECT, one that closes): the hub sends none.
                    self._error(f"no request can follow {recorded.method!r} "
                                f"{recorded.target!r}: {error}")
                    return
            else:
                # ConnectionClosed.
                return


class ScriptedWorker:
    """
    One worker slot, as a context manager, that answers the first request
    it gets with C{answer}, raw, and every later one with L{OK_RESPONSE}.

    With C{close}, it closes its connection right after C{answer}.  On
    exit a slot still open sends the detach notice and waits for the hub
    to close it, so that no slot of it is left in the pool.

    :ivar heads: the heads of the requests it received, in order.
    :ivar hub_closed: set once the hub ended the connection.
    """

    _names = itertools.count()

    def __init__(self, port: int, answer: bytes, close: bool = False) -> None:
        self.heads: list[bytes] = []
        self.hub_closed = threading.Event()
        self._port = port
        self._answer = answer
        self._close = close
        self._attached = threading.Event()
        self._failed: BaseException | None = None
        self._stopping = threading.Event()
        self._name = f"scripted/{next(self._names)}"
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ScriptedWorker:
        self._thread.start()
        if not self._attached.wait(WAIT) or self._failed is not None:
            self._stopping.set()
            raise AssertionError(f"{self._name} did not attach: {self._failed!r}")
        return self

    def __exit__(self, *exc_info) -> None:
        self._stopping.set()
        self._thread.join(2 * WAIT)

    def _run(self) -> None:
        try:
            sock, buffer = _attach(self._port, self._name)
        except OSError as error:
            self._failed = error
            self._attached.set()
            return
        self._attached.set()
        with sock:
            if self._serve(sock, buffer):
                self._detach(sock)

    def _serve(self, sock: socket.socket, buffer: bytes) -> bool:
        """
        Answer requests until asked to stop.

        :return: whether the connection is still open.
        """
        while True:
            head, found, rest = buffer.partition(b"\r\n\r\n")
            if found:
                self.heads.append(head)
                buffer = rest[_content_length(head):]
                try:
                    sock.sendall(self._answer if len(self.heads) == 1 else OK_RESPONSE)
                except OSError:
                    self.hub_closed.set()
                    return False
                if self._close and len(self.heads) == 1:
                    return False
                continue
            if not _readable(sock, self._stopping):
                return True
            data = _recv(sock)
            if not data:
                self.hub_closed.set()
                return False
            buffer += data

    def _detach(self, sock: socket.socket) -> None:
        """Leave the pool as a draining worker does, and wait for the close."""
        try:
            sock.sendall(DETACH_NOTICE)
        except OSError:
            return
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if select.select([sock], [], [], POLL)[0] and not _recv(sock):
                self.hub_closed.set()
                return


def _content_length(head: bytes) -> int:
    """The Content-Length a request head the hub wrote announces (0 if none)."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            return int(value)
    return 0


def exchange(
    port: int,
    data: bytes,
    count: int | None = None,
    methods: Sequence[str] = (),
    timeout: float = WAIT,
) -> Exchange:
    """
    Send C{data} on a new consumer connection, and read the answers with
    h11 until the hub closes the connection, C{count} responses have
    arrived, or C{timeout} has passed.

    :param methods: the methods of the requests answered, in order, as far
        as they matter to h11 (``HEAD``); ``GET`` beyond them.
    """
    result = Exchange()
    connection = h11.Connection(h11.CLIENT, max_incomplete_event_size=H11_MAX_HEAD)

    def expect_response() -> None:
        # h11 reads a response only to a request it sent itself.
        method = methods[len(result.responses)] if len(result.responses) < len(methods) else "GET"
        connection.send(h11.Request(method=method, target="/", headers=[("Host", "h")]))
        connection.send(h11.EndOfMessage())

    expect_response()
    deadline = time.monotonic() + timeout
    head: h11.Response | None = None
    body: list[bytes] = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except OSError:
            # Refused and closed before all of it was read: what came back
            # is still read.
            pass
        while count is None or len(result.responses) < count:
            try:
                event = connection.next_event()
            except h11.RemoteProtocolError as error:
                result.error = str(error)
                break
            if event is h11.NEED_DATA:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                sock.settimeout(left)
                try:
                    chunk = sock.recv(65536)
                except socket.timeout:
                    break
                except OSError:
                    chunk = b""
                result.closed = not chunk
                connection.receive_data(chunk)
            elif isinstance(event, h11.Response):
                head, body = event, []
                result.heads.append(head.status_code)
            elif isinstance(event, h11.Data):
                body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                result.responses.append(Response(
                    head.status_code, bytes(head.reason),
                    tuple((bytes(n), bytes(v)) for n, v in head.headers.raw_items()),
                    b"".join(body),
                ))
                if connection.our_state is connection.their_state is h11.DONE:
                    connection.start_next_cycle()
                    expect_response()
            elif isinstance(event, h11.ConnectionClosed):
                result.closed = True
                break
            # An interim (1xx) response: the final one follows.
    return result
