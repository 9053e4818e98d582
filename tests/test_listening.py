"""
A listener out of descriptors answers each new connection 503 with
Retry-After from its reserved descriptor, and logs counts, not a line per
connection; Twisted alone would reset each one and log it.

The listener runs in a process of its own whose descriptors are all taken,
so that ``accept`` really fails with ``EMFILE``.
"""

from __future__ import annotations

import signal
import socket
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import pytest

from pothead.hub.listening import overflow_response, with_backlog
from tests.processes import Process

#: A listener whose process then takes every descriptor left.
PROGRAM = textwrap.dedent("""
    import os, sys
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ServerEndpoint
    from twisted.internet.protocol import Factory, Protocol
    from twisted.logger import globalLogBeginner, textFileLogObserver
    from pothead.hub.connection_limit import ConnectionLimit
    from pothead.hub.listening import DescriptorReserve, Listener, overflow_response

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    listener = Listener(
        TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), Factory.forProtocol(Protocol),
        ConnectionLimit(1000, reactor, "consumer"),
        DescriptorReserve(reactor, overflow_response(3)), reactor,
    )
    listener.startService()
    hog = []

    def starve():
        # Once running: the reactor's own waker needs descriptors to start.
        while True:
            try:
                hog.append(os.open(os.devnull, os.O_RDONLY))
            except OSError:
                break
        print("listening on", listener.port.getHost().port, flush=True)

    reactor.callWhenRunning(starve)
    reactor.run()
""")


def ask(port: int) -> bytes:
    """Send a request on a new connection; everything read until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
        return answer


@pytest.fixture
def starved():
    """The port of a listener in a process with no descriptor left, and the process."""
    process = Process([sys.executable, "-c", PROGRAM], nofile=(64, 64))
    try:
        port = int(process.wait_for(r"listening on (\d+)")[0].group(1))
        yield port, process
    finally:
        process.stop()


def answered(lines: list[str]) -> int:
    """How many connections the listener's count lines say it answered 503."""
    return sum(int(line.split("answered ")[1].split()[0])
               for line in lines if "out of descriptors" in line)


@pytest.mark.process
def test_out_of_descriptors_answered_503(starved):
    """Every connection, one after another or forty at once, gets the 503 and a clean close, no reset."""
    port, process = starved
    expected = overflow_response(3)
    assert expected.startswith(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 3\r\n")
    for _ in range(5):
        assert ask(port) == expected
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: ask(port), range(40)))
    assert answers == [expected] * 40
    # The count of the last second is logged when that second ends.
    process.wait_for_lines(lambda lines: answered(lines) >= 45, "counts of 45 answered")
    process.stop(signal.SIGTERM)
    output = process.output
    counts = [line for line in output.splitlines() if "out of descriptors" in line]
    assert 0 < len(counts) <= 10, output
    assert answered(process.lines) == 45, output
    assert "Traceback" not in output and "EMFILE recovery" not in output, output


@pytest.mark.unit
@pytest.mark.parametrize("description, expected", [
    ("tcp:8080", "tcp:8080:backlog=500"),
    ("tcp:8080:interface=127.0.0.1", "tcp:8080:interface=127.0.0.1:backlog=500"),
    ("ssl:8443:privateKey=k.pem", "ssl:8443:privateKey=k.pem:backlog=500"),
    ("unix:/run/p.sock", "unix:/run/p.sock:backlog=500"),
    ("tcp:8080:backlog=7", "tcp:8080:backlog=7"),
    ("systemd:domain=INET:index=0", "systemd:domain=INET:index=0"),
])
def test_backlog_follows_the_limit(description, expected):
    """A listen backlog as deep as the connection limit, unless the endpoint sets its own or cannot."""
    assert with_backlog(description, 500) == expected
