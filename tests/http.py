"""
A treq client for tests, with its own connection pool so that each test
closes every connection it opened.
"""

from __future__ import annotations

import treq
from twisted.internet import reactor
from twisted.web.client import HTTPConnectionPool


class Client:
    """
    treq bound to a private connection pool.
    """

    def __init__(self, persistent: bool = True) -> None:
        self.pool = HTTPConnectionPool(reactor, persistent=persistent)
        self.pool.maxPersistentPerHost = 64

    async def request(self, method: str, url: str, **kwargs):
        """
        Send one request and read the whole body.

        :return: C{(response, body)}
        """
        response = await treq.request(method, url, pool=self.pool, **kwargs)
        body = await treq.content(response)
        return response, body

    async def close(self) -> None:
        await self.pool.closeCachedConnections()


async def fetch(method: str, url: str, **kwargs):
    """
    One request on a connection of its own, closed afterwards.

    :return: C{(response, body)}
    """
    client = Client()
    try:
        return await client.request(method, url, **kwargs)
    finally:
        await client.close()
