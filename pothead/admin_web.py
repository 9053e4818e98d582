"""
The admin site both programs serve on C{--admin ENDPOINT}: C{/metrics}
in Prometheus text format, C{/healthz}, and whatever pages each adds.

It is off by default, and meant for loopback or a private interface.
"""

from __future__ import annotations

from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

#: What an admin page answers: status code, content type and body.
Answer = tuple[int, bytes, bytes]

TEXT = b"text/plain; charset=utf-8"


class Page(Resource):
    """
    A page computed afresh at every C{GET}, never cached.
    """

    isLeaf = True

    def __init__(self, answer: Callable[[], Answer]) -> None:
        super().__init__()
        self._answer = answer

    def render_GET(self, request: Request) -> bytes:
        code, content_type, body = self._answer()
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", content_type)
        request.setHeader(b"Cache-Control", b"no-store")
        return body


def healthy() -> Answer:
    """C{/healthz}: the process serves."""
    return 200, TEXT, b"ok\n"


def admin_site(registry: CollectorRegistry, pages: dict[bytes, Resource]) -> Site:
    """
    A site serving C{registry} at C{/metrics}, C{/healthz}, and C{pages}
    by their names (C{b""} is the root).

    C{/metrics} is written on the reactor thread, by C{prometheus_client}'s
    C{generate_latest}: its collectors read the program's live state, which
    only the reactor thread may touch.  (C{prometheus_client}'s own Twisted
    resource runs it in the reactor's thread pool.)
    """
    root = Resource()
    root.putChild(b"metrics", Page(
        lambda: (200, CONTENT_TYPE_LATEST.encode("ascii"), generate_latest(registry))))
    root.putChild(b"healthz", Page(healthy))
    for name, page in pages.items():
        root.putChild(name, page)
    site = Site(root)
    site.noisy = False
    # A scrape every few seconds is not news for the log.
    site.log = lambda request: None
    return site
