"""
The hub: the consumer Site and the worker-port factory, sharing pools.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime
from twisted.web.server import Site

from pothead.attach import DEFAULT_POOL
from pothead.consumer import DEFAULT_MAX_HEADER_BYTES, consumer_site
from pothead.hub_attach import WorkerPortFactory
from pothead.pool import Pool
from pothead.tokens import TokenCheck

#: Seconds a new worker-port connection has to complete its attach.
DEFAULT_ATTACH_TIMEOUT = 10.0


class Hub:
    """
    The state one hub process shares between its two kinds of listener.

    :ivar pools: the pools workers may attach to, by name.
    """

    def __init__(
        self,
        clock: IReactorTime,
        token: str | None = None,
        attach_timeout: float = DEFAULT_ATTACH_TIMEOUT,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    ) -> None:
        self.pools = {DEFAULT_POOL: Pool(DEFAULT_POOL)}
        self._clock = clock
        self._token_check = TokenCheck(token)
        self._attach_timeout = attach_timeout
        self._max_header_bytes = max_header_bytes

    def consumer_site(self) -> Site:
        """
        A Site for a consumer listener: requests go to the default pool.
        """
        return consumer_site(
            self.pools[DEFAULT_POOL], self._clock, self._max_header_bytes
        )

    def worker_factory(self) -> WorkerPortFactory:
        """
        A factory for a worker-port listener.
        """
        return WorkerPortFactory(
            self.pools, self._token_check, self._attach_timeout, self._clock
        )
