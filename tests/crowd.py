"""
A crowd of consumers, each on a connection of its own, driven from one
thread with non-blocking sockets: enough of them at once to run a hub
into its descriptor and connection limits.

Each sends one request and reads the answer; what happened to each is
kept as an outcome: the status it got, or how its connection failed
(``reset``, ``closed without an answer``, ``timed out``).
"""

from __future__ import annotations

import errno
import resource
import selectors
import socket
import time
from collections import Counter

#: What a consumer whose connection was reset saw.
RESET = "reset"

#: What a consumer whose connection closed before a whole answer saw.
UNANSWERED = "closed without an answer"

#: What a consumer still waiting at the deadline saw.
TIMED_OUT = "timed out"


def raise_descriptor_limit(needed: int) -> bool:
    """
    Raise this process's soft descriptor limit to at least C{needed} if
    the hard limit allows it.

    :return: whether it does.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return True
    if hard != resource.RLIM_INFINITY and hard < needed:
        return False
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return True


class Consumer:
    """
    One connection sending one request, and the answer it reads.
    """

    def __init__(self, port: int, request: bytes) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setblocking(False)
        self._unsent = request
        self.received = b""
        self.outcome: int | str | None = None
        code = self.socket.connect_ex(("127.0.0.1", port))
        if code not in (0, errno.EINPROGRESS):
            self.outcome = f"connect failed: {errno.errorcode.get(code, code)}"

    def send(self) -> bool:
        """
        Send what is left of the request once connected.

        :return: whether all of it has gone.
        """
        code = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self.outcome = RESET if code == errno.ECONNRESET else errno.errorcode.get(code, code)
            return False
        try:
            sent = self.socket.send(self._unsent)
        except BlockingIOError:
            return False
        except ConnectionResetError:
            self.outcome = RESET
            return False
        self._unsent = self._unsent[sent:]
        return not self._unsent

    def receive(self) -> None:
        """
        Read what has come; set the outcome once the answer is whole or
        the connection failed.
        """
        try:
            data = self.socket.recv(65536)
        except BlockingIOError:
            return
        except ConnectionResetError:
            self.outcome = RESET
            return
        if not data:
            self.outcome = UNANSWERED
            return
        self.received += data
        head, found, body = self.received.partition(b"\r\n\r\n")
        if not found:
            return
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(body) >= length:
            self.outcome = int(head.split(b" ", 2)[1])


def crowd(port: int, request: bytes, count: int, timeout: float,
          waiting: callable = lambda outcomes: None) -> list[Consumer]:
    """
    Open C{count} connections to C{port} at once, each sending
    C{request}, and read every answer, for at most C{timeout} seconds.

    :param waiting: called about every 50 ms with the outcomes so far
        (a L{Counter}), so that a test can act while the crowd waits.
    :return: the consumers, each with its outcome.
    """
    selector = selectors.DefaultSelector()
    consumers = [Consumer(port, request) for _ in range(count)]
    for consumer in consumers:
        if consumer.outcome is None:
            selector.register(consumer.socket, selectors.EVENT_WRITE, consumer)
    deadline = time.monotonic() + timeout
    pending = sum(consumer.outcome is None for consumer in consumers)
    while pending and time.monotonic() < deadline:
        for key, events in selector.select(0.05):
            consumer = key.data
            if events & selectors.EVENT_WRITE:
                if consumer.send():
                    selector.modify(consumer.socket, selectors.EVENT_READ, consumer)
            else:
                consumer.receive()
            if consumer.outcome is not None:
                selector.unregister(consumer.socket)
                consumer.socket.close()
                pending -= 1
        waiting(Counter(consumer.outcome for consumer in consumers))
    for consumer in consumers:
        if consumer.outcome is None:
            consumer.outcome = TIMED_OUT
            selector.unregister(consumer.socket)
            consumer.socket.close()
    selector.close()
    return consumers
