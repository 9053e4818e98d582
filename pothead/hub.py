"""
The hub: the consumer Site and the worker-port factory, sharing pools.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime
from twisted.web.server import Site

from pothead.attach import DEFAULT_POOL
from pothead.consumer import consumer_site
from pothead.hub_attach import WorkerPortFactory
from pothead.limits import Limits
from pothead.pool import Pool
from pothead.tokens import TokenCheck


class Hub:
    """
    The state one hub process shares between its two kinds of listener.

    :ivar pools: the pools workers may attach to, by name.
    :ivar limits: the limits and timeouts it enforces.
    """

    def __init__(
        self, clock: IReactorTime, token: str | None = None, limits: Limits | None = None
    ) -> None:
        self.pools = {DEFAULT_POOL: Pool(DEFAULT_POOL)}
        self.limits = limits or Limits()
        self._clock = clock
        self._token_check = TokenCheck(token)

    def consumer_site(self) -> Site:
        """
        A Site for a consumer listener: requests go to the default pool.
        """
        return consumer_site(self.pools[DEFAULT_POOL], self._clock, self.limits)

    def worker_factory(self) -> WorkerPortFactory:
        """
        A factory for a worker-port listener.
        """
        return WorkerPortFactory(
            self.pools, self._token_check, self.limits.attach_timeout, self._clock
        )
