"""
The worker's end of a slot: open a connection to the hub, attach, then
serve HTTP on it.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.server import Site

from pothead.attach import UPGRADE_TOKENS, HeadReceiver, attach_request, header_tokens

_log = Logger()


class AttachFailed(Exception):
    """
    The hub did not accept this slot's attach request.
    """


class AttachClient(HeadReceiver):
    """
    One slot's connection to the hub.

    Nothing is sent until L{attach} is called, so a slot can hold an open
    connection while the worker decides whether it may take work.
    """

    def __init__(self, site: Site, pool: str, token: str | None, name: str,
                 timeout: float, clock: IReactorTime) -> None:
        super().__init__()
        self._site = site
        self._pool = pool
        self._token = token
        self.name = name
        self.timeout = timeout
        self.callLater = clock.callLater
        self._attached: Deferred[None] | None = None

    def connectionMade(self) -> None:
        # The handshake timeout starts with attach(), not with the connect.
        pass

    def attach(self) -> Deferred[None]:
        """
        Send the attach request.

        :return: fires when the hub has switched protocols and this slot
            serves HTTP; fails with L{AttachFailed} on a refusal, a bad
            answer, a timeout or a lost connection.
        """
        peer = self.transport.getPeer()
        host = f"{peer.host}:{peer.port}" if hasattr(peer, "port") else "localhost"
        self._attached = Deferred()
        self.setTimeout(self.timeout)
        self.transport.write(attach_request(host, self._pool, self._token, self.name))
        return self._attached

    def head_received(self, status_line: bytes, headers: Headers) -> None:
        parts = status_line.split(b" ", 2)
        code = parts[1] if len(parts) > 1 else b""
        upgrade = [t.lower() for t in header_tokens(headers, b"upgrade")]
        if code != b"101" or UPGRADE_TOKENS[0] not in upgrade:
            self._fail(f"hub answered {status_line.decode('latin-1')!r}")
            self.transport.loseConnection()
            return
        channel = self._site.buildProtocol(self.transport.getPeer())
        self.switch_to(channel)
        attached, self._attached = self._attached, None
        attached.callback(None)

    def head_failed(self, why: str) -> None:
        self._fail(f"bad answer from hub: {why}")
        super().head_failed(why)

    def connectionLost(self, reason: Failure = None) -> None:
        self._fail(f"connection lost while attaching: {reason.getErrorMessage()}")
        super().connectionLost(reason)

    def _fail(self, why: str) -> None:
        if self._attached is not None:
            attached, self._attached = self._attached, None
            attached.errback(AttachFailed(f"slot {self.name}: {why}"))


class AttachFactory(Factory):
    """
    Build an L{AttachClient} for each connection one slot opens.
    """

    def __init__(self, site: Site, pool: str, token: str | None, name: str,
                 timeout: float, clock: IReactorTime) -> None:
        self._args = (site, pool, token, name, timeout, clock)

    def buildProtocol(self, addr) -> AttachClient:
        client = AttachClient(*self._args)
        client.factory = self
        return client
