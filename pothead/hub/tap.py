"""
``twistd pothead-hub``: options and service wiring for the hub.
"""

from __future__ import annotations

from dataclasses import replace

from twisted.application.service import MultiService
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory
from twisted.python import usage

from pothead.attach import DEFAULT_POOL
from pothead.hub.admin import admin_service
from pothead.hub.connection_limit import ConnectionLimit
from pothead.hub.descriptors import take_budget
from pothead.hub.limits import Limits
from pothead.hub.listening import DescriptorReserve, Listener, overflow_response, with_backlog
from pothead.hub.routing import PoolSpecError, check_pools, parse_pool, parse_pools_file
from pothead.hub.service import Hub, HubService
from pothead.logs import log_format
from pothead.options import require_positive
from pothead.tokens import TokenError, load_token

DEFAULTS = Limits()

#: Command-line option name -> Limits field.
_LIMIT_OPTIONS = {
    "max-queue": "max_queue",
    "max-connections": "max_connections",
    "max-slots": "max_slots",
    "queue-timeout": "queue_timeout",
    "request-timeout": "request_timeout",
    "max-body-size": "max_body_bytes",
    "max-header-size": "max_header_bytes",
    "header-timeout": "header_timeout",
    "body-timeout": "body_timeout",
    "idle-timeout": "idle_timeout",
    "attach-timeout": "attach_timeout",
    "quiet-timeout": "quiet_timeout",
    "retry-after": "retry_after",
    "retries": "retries",
    "stop-timeout": "stop_timeout",
    "stall-timeout": "stall_timeout",
}


class Options(usage.Options):
    """
    Command-line options of ``twistd pothead-hub``.
    """

    synopsis = "[options]"
    longdesc = (
        "Queue consumer HTTP requests and hand each to the next idle worker "
        "slot. Every address is a Twisted endpoint string: tcp:8080, "
        "ssl:8443:privateKey=key.pem, unix:/run/pothead.sock, systemd:domain=INET:index=0. "
        "Several services share a hub as pools, each with its own queue, slots and "
        "limits, routed by Host and path: --pool thumbs:host=thumbs.example.com "
        "--pool models:prefix=/v1/models:strip:max-queue=200 sends Host "
        "thumbs.example.com to thumbs and /v1/models/... on any other host to models "
        "(the worker sees /...), and anything else, with no pool named default, gets "
        "404; workers join with --pool NAME (docs/operations.md, Pools)."
    )
    optParameters = [
        ["admin", None, None,
         "Serve a status page (/), /metrics (Prometheus), /status.json, /healthz and "
         "/readyz on this endpoint, e.g. tcp:9090:interface=127.0.0.1 (default: off; it "
         "shows every worker and job, so keep it private)."],
        ["pools", None, None,
         "File of pool definitions, one per line as --pool takes them ('#' starts a "
         "comment line)."],
        ["log-format", None, "text",
         "'text', or 'json': every log line (access log and events) as one JSON object "
         "per line on standard output, for log shippers.", log_format],
        ["token-file", None, None,
         "File whose first line is the token workers must present "
         "(default: $POTHEAD_TOKEN, else no token)."],
        ["access-log", None, None,
         "File for the access log in combined log format, written in 64 KiB "
         "blocks at most a second late (cheaper per request), or 'none' "
         "(default: the twistd log, a line at a time)."],
    ] + [
        [option, None, default, help, kind]
        for option, default, help, kind in [
            ("max-queue", DEFAULTS.max_queue, "Jobs that may wait in the queue (503 beyond).", int),
            ("max-connections", None,
             "Consumer connections open at once; beyond, new ones wait to be accepted and "
             "idle kept-alive ones are closed for them (default: --max-queue plus "
             "--max-slots plus 256, as far as the descriptor limit allows).", int),
            ("max-slots", DEFAULTS.max_slots,
             "Worker slots attached at once (503 to further attaches).", int),
            ("queue-timeout", DEFAULTS.queue_timeout,
             "Seconds a job may wait for a worker (then 503).", float),
            ("request-timeout", DEFAULTS.request_timeout,
             "Seconds from arrival to the worker's response head (then 504).", float),
            ("max-body-size", DEFAULTS.max_body_bytes,
             "Largest request body in bytes (413 beyond).", int),
            ("max-header-size", DEFAULTS.max_header_bytes,
             "Largest request line plus headers in bytes (414/431 beyond).", int),
            ("header-timeout", DEFAULTS.header_timeout,
             "Seconds a consumer has to send its request head (then 408).", float),
            ("body-timeout", DEFAULTS.body_timeout,
             "Seconds a consumer has to send its request body (then 408).", float),
            ("idle-timeout", DEFAULTS.idle_timeout,
             "Seconds a consumer connection may stay idle between requests.", float),
            ("attach-timeout", DEFAULTS.attach_timeout,
             "Seconds a worker's attach request has to arrive, from its first byte.", float),
            ("quiet-timeout", DEFAULTS.quiet_timeout,
             "Seconds a worker connection may stay silent before attaching "
             "(workers gated by --admission wait so).", float),
            ("retry-after", DEFAULTS.retry_after,
             "Seconds to suggest in Retry-After with every 503.", int),
            ("retries", DEFAULTS.retries,
             "Times an idempotent request is given to another worker when its "
             "worker vanished before answering.", int),
            ("stop-timeout", DEFAULTS.stop_timeout,
             "Seconds queued and in-flight jobs get to finish when the hub stops.", float),
            ("stall-timeout", DEFAULTS.stall_timeout,
             "Seconds a response may go without a byte from its worker (stopped, "
             "or held back by a consumer that stopped reading); then both are "
             "cut off.", float),
        ]
    ]

    optFlags = [
        ["no-server-timing", None,
         "Do not add a Server-Timing header (time queued, time at the worker) to "
         "responses: relay the worker's headers exactly."],
        ["allow-legacy-without-token", None,
         "Allow --legacy-worker while a token is required: legacy workers "
         "cannot present one, so that port is open to anyone who reaches it."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["consumer"] = []
        self["worker"] = []
        self["legacy-worker"] = []
        self["pool"] = []

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

    def opt_pool(self, definition: str) -> None:
        """
        A pool of its own FIFO queue, slots and limits (repeatable):
        NAME[:host=H1,H2][:prefix=/p][:strip][:max-queue=N][:queue-timeout=S]
        [:request-timeout=S]. A request goes to the pool whose host= names
        its Host (exactly, or *.suffix; port ignored; none: any host) and
        whose prefix= is the longest one of its path; else to the pool
        named default, if any; else 404. strip takes the prefix off the
        path the worker sees; unset limits are the hub's. Workers join
        with --pool NAME. Default: one pool, default, for everything.
        """
        try:
            self["pool"].append(parse_pool(definition))
        except PoolSpecError as error:
            raise usage.UsageError(f"--pool {definition}: {error}") from None

    def opt_legacy_worker(self, endpoint: str) -> None:
        """
        Endpoint for workers that do not attach, such as POTHEAD 0.4.3
        workers (repeatable; off by default; unauthenticated).
        """
        self["legacy-worker"].append(endpoint)

    def postOptions(self) -> None:
        self["consumer"] = self["consumer"] or ["tcp:8080"]
        self["worker"] = self["worker"] or ["tcp:4040"]
        require_positive(
            self, *(name for name in _LIMIT_OPTIONS
                    if name != "retries" and self[name] is not None)
        )
        if self["retries"] < 0:
            raise usage.UsageError(f"--retries must be 0 or more, not {self['retries']}")
        self["limits"] = Limits(**{field: self[option] for option, field in _LIMIT_OPTIONS.items()})
        try:
            pools = self["pool"] + (parse_pools_file(self["pools"]) if self["pools"] else [])
            check_pools(pools)
        except PoolSpecError as error:
            raise usage.UsageError(str(error)) from None
        self["pools"] = pools or None
        if self["legacy-worker"] and pools and DEFAULT_POOL not in {p.name for p in pools}:
            raise usage.UsageError(
                "--legacy-worker: legacy workers serve the pool named default; define it "
                "with --pool default")
        try:
            self["token"] = load_token(self["token-file"])
        except TokenError as e:
            raise usage.UsageError(str(e)) from None
        if self["legacy-worker"] and self["token"] and not self["allow-legacy-without-token"]:
            raise usage.UsageError(
                "--legacy-worker cannot check the token the hub requires; add "
                "--allow-legacy-without-token to open that port anyway"
            )


def makeService(config: Options) -> HubService:
    """
    One listener per ``--consumer``, ``--worker`` and ``--legacy-worker``
    endpoint, all serving the same hub, within the descriptors the process
    can have.
    """
    from twisted.internet import reactor

    limits = config["limits"]
    endpoints = config["consumer"] + config["worker"] + config["legacy-worker"]
    budget = take_budget(limits.connections, limits.max_slots, len(endpoints))
    limits = replace(limits, max_connections=budget.max_connections, max_slots=budget.max_slots)
    hub = Hub(reactor, token=config["token"], limits=limits, access_log=config["access-log"],
              server_timing=not config["no-server-timing"], pools=config["pools"])
    service = HubService(hub)
    service.log_format = config["log-format"]
    reserve = DescriptorReserve(reactor, overflow_response(limits.retry_after))

    def listen(description: str, factory: Factory, limit: ConnectionLimit,
               parent: MultiService) -> None:
        endpoint = serverFromString(reactor, with_backlog(description, limit.maximum))
        Listener(endpoint, factory, limit, reserve, reactor).setServiceParent(parent)

    for description in config["consumer"]:
        listen(description, hub.consumer_factory(), hub.consumer_connections, service.consumers)
    for description in config["worker"]:
        listen(description, hub.worker_factory(), hub.worker_connections, service.workers)
    for description in config["legacy-worker"]:
        listen(description, hub.legacy_worker_factory(), hub.worker_connections, service.workers)
    if config["admin"] is not None:
        admin_service(hub, reactor, config["admin"], reserve.answered).setServiceParent(service)
    return service
