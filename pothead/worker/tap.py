"""
``twistd pothead-worker``: options and service wiring for the worker.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

from twisted.application import strports
from twisted.application.service import Service
from twisted.python import usage

from pothead.attach import DEFAULT_POOL
from pothead.logs import log_format
from pothead.options import require_positive
from pothead.tokens import TokenError, load_token
from pothead.worker.admission import CpuAdmission, PollAdmission, parse_admission
from pothead.worker.hubs import DEFAULT_RESOLVE_INTERVAL
from pothead.worker.processes import ready_notice, supervisor
from pothead.worker.service import (
    DEFAULT_ATTACH_TIMEOUT,
    DEFAULT_DRAIN_TIMEOUT,
    WorkerService,
    worker_service,
)
from pothead.worker.upstream import DEFAULT_UPSTREAM_WAIT, parse_upstream

#: The hub a worker attaches to when no --hub is given.
DEFAULT_HUB = "tcp:127.0.0.1:4040"

#: How slots are shared among several hubs (see worker_service).
SPREADS = ("late", "even")


def _app_module(spec: str, app_dir: str) -> tuple[str, str]:
    """
    The module and attribute C{spec} names, with C{app_dir} put first on
    the import path.
    """
    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        raise usage.UsageError(f"--app must look like module:app, not {spec!r}")
    path = os.path.abspath(app_dir)
    if path not in sys.path:
        sys.path.insert(0, path)
    return module_name, attribute


def find_app(spec: str, app_dir: str) -> None:
    """
    Check, without running the app's module, that C{spec} names a module
    that exists: what the parent of C{--processes}, which never loads the
    app, can check before its children do.

    :raise usage.UsageError: if it does not.
    """
    module_name, _ = _app_module(spec, app_dir)
    try:
        found = importlib.util.find_spec(module_name)
    except (ImportError, ValueError) as e:
        found, why = None, f" ({e})"
    else:
        why = ""
    if found is None:
        raise usage.UsageError(
            f"No such WSGI application: cannot find module {module_name!r}{why}"
        )


def load_app(spec: str, app_dir: str):
    """
    Import the WSGI application named by C{spec} (``module:attribute``),
    looking in C{app_dir} first.

    :raise usage.UsageError: naming what is missing, so that a typo is a
        clear error at startup rather than a traceback on the first request.
    """
    module_name, attribute = _app_module(spec, app_dir)
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise usage.UsageError(
            f"No such WSGI application: cannot import module {module_name!r} ({e})"
        ) from None
    target = module
    for name in attribute.split("."):
        try:
            target = getattr(target, name)
        except AttributeError:
            raise usage.UsageError(
                f"No such WSGI application: module {module_name!r} has no {attribute!r}"
            ) from None
    if not callable(target):
        raise usage.UsageError(f"WSGI application {spec!r} is not callable")
    return target


class Options(usage.Options):
    """
    Command-line options of ``twistd pothead-worker``.
    """

    synopsis = "--app module:app [options]"
    longdesc = (
        "Attach to a pothead hub and serve a WSGI application over those "
        "connections, one request at a time per slot. The hub address is a "
        "Twisted client endpoint string: tcp:hub.example:4040, "
        "tls:hub.example:4040, unix:/run/pothead-workers.sock."
    )
    optParameters = [
        ["app", None, None, "The WSGI application, as module:attribute (or --upstream)."],
        ["upstream", None, None,
         "Instead of --app: relay each job to this local HTTP server, "
         "http://HOST:PORT or unix:/path/to.sock (a sidecar worker)."],
        ["upstream-wait", None, DEFAULT_UPSTREAM_WAIT,
         "Seconds the --upstream server may refuse connections (its jobs handed "
         "back to the hub meanwhile) before jobs are answered 502.", float],
        ["upstream-health", None, None,
         "A path on the --upstream server that answers 2xx while it is ready; "
         "slots attach only then (checked every 2 s)."],
        ["app-dir", None, ".",
         "Directory to import the application from (default: the current one)."],
        ["spread", None, "late",
         "With several --hub: 'late' offers every slot to every hub and takes the "
         "oldest job among them (late binding); 'even' gives each slot to one hub, "
         "round robin, as POTHEAD 0.4.3 did."],
        ["slots", None, None,
         "Requests served at once: one attached connection each (default 1; "
         "with --poll-jobs, the most at once, default twice the CPUs).", int],
        ["admission", None, None,
         "Gate slots on idle CPU: cpu:REQUIRED[,max=N] attaches one more slot "
         "only while REQUIRED CPUs are idle (one job always runs)."],
        ["token-file", None, None,
         "File whose first line is the hub's token (default: $POTHEAD_TOKEN)."],
        ["attach-timeout", None, DEFAULT_ATTACH_TIMEOUT,
         "Seconds the hub has to answer an attach.", float],
        ["drain-timeout", None, DEFAULT_DRAIN_TIMEOUT,
         "Seconds in-flight requests get to finish on stop (SIGTERM).", float],
        ["resolve-interval", None, DEFAULT_RESOLVE_INTERVAL,
         "Seconds between two resolutions of a --hub host name; every address it "
         "resolves to is a hub (with --spread late).", float],
        ["admin", None, None,
         "Serve /metrics (Prometheus) and /healthz on this endpoint, e.g. "
         "tcp:9091:interface=127.0.0.1 (default: off; one worker process only, "
         "not with --processes)."],
        ["log-format", None, "text",
         "'text', or 'json': every log line as one JSON object per line on standard "
         "output, for log shippers (with --processes, the parent's, children's lines "
         "among them).", log_format],
    ]

    optFlags = [
        ["poll-jobs", None,
         "Let the app's wait_for_slot(halt) decide when a slot attaches, as "
         "POTHEAD 0.4.3's --poll-jobs."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["hubs"] = []
        self["pools"] = []

    def opt_pool(self, name: str) -> None:
        """
        The pool to join on the hub (default: default); repeat it to serve
        several: each slot then takes the oldest job across them.
        """
        if name not in self["pools"]:
            self["pools"].append(name)

    def opt_hub(self, endpoint: str) -> None:
        """
        Client endpoint of a hub's worker port (default tcp:127.0.0.1:4040);
        repeat it for several hubs.
        """
        self["hubs"].append(endpoint)

    # --processes and --max-jobs are methods, not optParameters, so that a
    # worker that uses neither has no key for them (its options stay the
    # dict they were).

    def opt_processes(self, value: str) -> None:
        """
        Run N worker processes, each with --slots slots, under this one,
        which restarts them, drains them on SIGTERM and replaces them one by
        one on SIGHUP (default 1: one process, no parent).
        """
        self["processes"] = _positive_int("processes", value)

    def opt_max_jobs(self, value: str) -> None:
        """
        After N jobs a worker process drains and exits 0, to be replaced
        (by the --processes parent at once, else by its service manager);
        for apps that leak (default: no limit).
        """
        self["max-jobs"] = _positive_int("max-jobs", value)

    def postOptions(self) -> None:
        if not self["hubs"]:
            self["hubs"] = [DEFAULT_HUB]
        if not self["pools"]:
            self["pools"] = [DEFAULT_POOL]
        if self["spread"] not in SPREADS:
            raise usage.UsageError(f"--spread must be late or even, not {self['spread']!r}")
        if len(self["hubs"]) > 1 and self["spread"] == "late" and (
            self["poll-jobs"] or self["admission"]
        ):
            # Each offer would hold an admission ticket of its own.
            raise usage.UsageError(
                "--admission and --poll-jobs work with one hub, or with --spread even"
            )
        if self["admin"] is not None and self.get("processes", 1) > 1:
            # The parent loads no app and serves no job, and its children
            # cannot share one port: each would need its own.
            raise usage.UsageError(
                "--admin serves one worker process's metrics, not those of --processes N "
                "children; run the workers as separate services, each with its own --admin"
            )
        if (self["app"] is None) == (self["upstream"] is None):
            raise usage.UsageError(
                "give --app module:app, or --upstream URL for a sidecar worker (one of them)"
            )
        if self["upstream"] is not None:
            self._check_sidecar()
            return
        if self["poll-jobs"] and self["admission"]:
            raise usage.UsageError("--poll-jobs and --admission exclude each other")
        if self["admission"]:
            try:
                self["cpu-gate"] = parse_admission(self["admission"])
            except ValueError as e:
                raise usage.UsageError(str(e)) from None
        if self["slots"] is None:
            self["slots"] = 2 * (os.cpu_count() or 1) if self["poll-jobs"] else 1
        require_positive(self, "slots", "attach-timeout", "drain-timeout", "resolve-interval")
        if self.get("processes", 1) > 1:
            # The parent never loads the app (its children do, and check
            # the rest); it only makes sure the module is there.
            find_app(self["app"], self["app-dir"])
        else:
            self["wsgi"] = load_app(self["app"], self["app-dir"])
        if "wsgi" in self and self["poll-jobs"] and not callable(
            getattr(self["wsgi"], "wait_for_slot", None)
        ):
            raise usage.UsageError(
                f"--poll-jobs needs {self['app']}.wait_for_slot(halt), which it lacks"
            )
        try:
            self["token"] = load_token(self["token-file"])
        except TokenError as e:
            raise usage.UsageError(str(e)) from None


    def _check_sidecar(self) -> None:
        for option in ("admission", "poll-jobs", "processes", "max-jobs"):
            if self.get(option):
                raise usage.UsageError(
                    f"--{option} is for a WSGI app; a sidecar worker's --slots say how many "
                    "jobs its server is given at once"
                )
        try:
            parse_upstream(self["upstream"])
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        if self["slots"] is None:
            self["slots"] = 1
        if self["upstream-health"] is not None and not self["upstream-health"].startswith("/"):
            raise usage.UsageError("--upstream-health must be a path, starting with /")
        require_positive(self, "slots", "attach-timeout", "drain-timeout", "resolve-interval",
                         "upstream-wait")
        try:
            self["token"] = load_token(self["token-file"])
        except TokenError as e:
            raise usage.UsageError(str(e)) from None


def _positive_int(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise usage.UsageError(f"--{name} must be a whole number above 0, not {value!r}")
    return number


def makeService(config: Options) -> Service:
    """
    The worker's slots and thread pool; or, with --processes N, the
    parent that runs N workers (L{pothead.worker.processes}).
    """
    from twisted.internet import reactor

    if config.get("processes", 1) > 1:
        service = supervisor(reactor, config)
    else:
        service = _worker(reactor, config)
        if config["admin"] is not None:
            strports.service(config["admin"], service.admin_site()).setServiceParent(service)
    service.log_format = config["log-format"]
    return service


def _worker(reactor, config: Options) -> WorkerService:
    """The worker of one process, serving an app or relaying to an upstream."""
    if config["upstream"] is not None:
        return worker_service(
            reactor, None, hubs=config["hubs"], slots=config["slots"], token=config["token"],
            pool=config["pools"], spread=config["spread"],
            resolve_interval=config["resolve-interval"],
            attach_timeout=config["attach-timeout"], drain_timeout=config["drain-timeout"],
            upstream=config["upstream"], upstream_wait=config["upstream-wait"],
            upstream_health=config["upstream-health"],
        )
    slots, admission = config["slots"], None
    if config["poll-jobs"]:
        admission = PollAdmission(config["wsgi"].wait_for_slot, reactor, reactor.getThreadPool())
    elif config.get("cpu-gate"):
        required, most = config["cpu-gate"]
        admission = CpuAdmission(required, reactor, max_slots=most)
        slots = admission.max_slots
    notice = ready_notice(reactor)

    def stop() -> None:
        # Said before the stop, so that the parent of --processes, if any,
        # waits for this drain rather than signal it.
        if notice is not None:
            notice.leaving()
        reactor.stop()

    service = worker_service(
        reactor,
        config["wsgi"],
        hubs=config["hubs"],
        spread=config["spread"],
        resolve_interval=config["resolve-interval"],
        slots=slots,
        admission=admission,
        token=config["token"],
        pool=config["pools"],
        attach_timeout=config["attach-timeout"],
        drain_timeout=config["drain-timeout"],
        max_jobs=config.get("max-jobs"),
        stop=stop,
    )
    if notice is not None:
        notice.setServiceParent(service)
    return service
