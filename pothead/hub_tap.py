"""
``twistd pothead-hub``: options and service wiring for the hub.
"""

from __future__ import annotations

from twisted.application import strports
from twisted.application.service import MultiService
from twisted.python import usage

from pothead.consumer import DEFAULT_MAX_HEADER_BYTES
from pothead.hub import DEFAULT_ATTACH_TIMEOUT, Hub
from pothead.options import require_positive
from pothead.tokens import TokenError, load_token


class Options(usage.Options):
    """
    Command-line options of ``twistd pothead-hub``.
    """

    synopsis = "[options]"
    longdesc = (
        "Queue consumer HTTP requests and hand each to the next idle worker "
        "slot. Every address is a Twisted endpoint string: tcp:8080, "
        "ssl:8443:privateKey=key.pem, unix:/run/pothead.sock, systemd:domain=INET:index=0."
    )
    optParameters = [
        ["token-file", None, None,
         "File whose first line is the token workers must present "
         "(default: $POTHEAD_TOKEN, else no token)."],
        ["attach-timeout", None, DEFAULT_ATTACH_TIMEOUT,
         "Seconds a worker connection has to finish attaching.", float],
        ["max-header-size", None, DEFAULT_MAX_HEADER_BYTES,
         "Largest consumer request line plus headers, in bytes (431 beyond).",
         int],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["consumer"] = []
        self["worker"] = []

    def opt_consumer(self, endpoint: str) -> None:
        """
        Endpoint consumers connect to (repeatable; default tcp:8080).
        """
        self["consumer"].append(endpoint)

    def opt_worker(self, endpoint: str) -> None:
        """
        Endpoint workers attach to (repeatable; default tcp:4040).
        """
        self["worker"].append(endpoint)

    def postOptions(self) -> None:
        self["consumer"] = self["consumer"] or ["tcp:8080"]
        self["worker"] = self["worker"] or ["tcp:4040"]
        require_positive(self, "attach-timeout", "max-header-size")
        try:
            self["token"] = load_token(self["token-file"])
        except TokenError as e:
            raise usage.UsageError(str(e)) from None


def makeService(config: Options) -> MultiService:
    """
    One listener per ``--consumer`` and ``--worker`` endpoint, all serving
    the same hub.
    """
    from twisted.internet import reactor

    hub = Hub(
        reactor,
        token=config["token"],
        attach_timeout=config["attach-timeout"],
        max_header_bytes=config["max-header-size"],
    )
    service = MultiService()
    for endpoint in config["consumer"]:
        strports.service(endpoint, hub.consumer_site()).setServiceParent(service)
    for endpoint in config["worker"]:
        strports.service(endpoint, hub.worker_factory()).setServiceParent(service)
    return service
