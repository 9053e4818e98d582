"""
Command-line options, service wiring and plugin discovery.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.application.internet import ClientService
from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin, getPlugins
from twisted.python import usage
from zope.interface.verify import verifyObject

from pothead.demo import app as demo_app
from pothead.hub import tap as hub_tap
from pothead.hub.descriptors import ATTACH_MARGIN
from pothead.hub.limits import Limits
from pothead.hub.listening import Listener
from pothead.hub.routing import PoolSpec
from pothead.worker import tap as worker_tap
from pothead.worker.hubs import HubSet
from pothead.worker.service import AppThreadsService, HubOffers

pytestmark = pytest.mark.unit

ROOT = Path(__file__).parent.parent


def parse(options_class, *argv, env=None, monkeypatch=None):
    options = options_class()
    options.parseOptions(list(argv))
    return dict(options)


def test_hub_defaults(monkeypatch):
    """
    With no options the hub listens where POTHEAD 0.4.3 did and needs no token.
    """
    monkeypatch.delenv("POTHEAD_TOKEN", raising=False)
    assert parse(hub_tap.Options) == {
        "consumer": ["tcp:8080"],
        "worker": ["tcp:4040"],
        "legacy-worker": [],
        "allow-legacy-without-token": 0,
        "admin": None,
        "log-format": "text",
        "no-server-timing": 0,
        "pool": [],
        "pools": None,
        "token-file": None,
        "token": None,
        "access-log": None,
        "max-queue": 1000,
        "max-connections": None,
        "max-slots": 1024,
        "queue-timeout": 60.0,
        "request-timeout": 600.0,
        "max-body-size": 1024**3,
        "max-header-size": 65536,
        "header-timeout": 30.0,
        "body-timeout": 300.0,
        "idle-timeout": 60.0,
        "attach-timeout": 10.0,
        "quiet-timeout": 300.0,
        "retry-after": 5,
        "retries": 1,
        "stop-timeout": 30.0,
        "stall-timeout": 300.0,
        "limits": Limits(),
    }


def test_hub_options(tmp_path, monkeypatch):
    """
    Listeners repeat, and the token comes from its file.
    """
    monkeypatch.setenv("POTHEAD_TOKEN", "from-env")
    token = tmp_path / "token"
    token.write_text("from-file\n")
    assert parse(
        hub_tap.Options,
        "--consumer", "tcp:1", "--consumer", "unix:/tmp/c.sock",
        "--worker", "tcp:2", "--token-file", str(token), "--access-log", "none",
        "--legacy-worker", "tcp:3", "--allow-legacy-without-token",
        "--max-queue", "7", "--queue-timeout", "1.5", "--request-timeout", "9",
        "--max-body-size", "100", "--max-header-size", "1000",
        "--header-timeout", "2", "--body-timeout", "3", "--idle-timeout", "20",
        "--attach-timeout", "2.5", "--retry-after", "11", "--stop-timeout", "4",
        "--retries", "0", "--stall-timeout", "45", "--max-connections", "50",
        "--max-slots", "8", "--admin", "tcp:9090:interface=127.0.0.1",
        "--log-format", "json", "--no-server-timing",
        "--pool", "default", "--pool", "thumbs:host=thumbs.test:max-queue=3",
    ) == {
        "consumer": ["tcp:1", "unix:/tmp/c.sock"],
        "worker": ["tcp:2"],
        "legacy-worker": ["tcp:3"],
        "allow-legacy-without-token": 1,
        "admin": "tcp:9090:interface=127.0.0.1",
        "log-format": "json",
        "no-server-timing": 1,
        "pool": [PoolSpec("default"), PoolSpec("thumbs", ("thumbs.test",))],
        "pools": [PoolSpec("default"), PoolSpec("thumbs", ("thumbs.test",))],
        "token-file": str(token),
        "token": "from-file",
        "access-log": "none",
        "max-queue": 7,
        "max-connections": 50,
        "max-slots": 8,
        "queue-timeout": 1.5,
        "request-timeout": 9.0,
        "max-body-size": 100,
        "max-header-size": 1000,
        "header-timeout": 2.0,
        "body-timeout": 3.0,
        "idle-timeout": 20.0,
        "attach-timeout": 2.5,
        "quiet-timeout": 300.0,
        "retry-after": 11,
        "retries": 0,
        "stop-timeout": 4.0,
        "stall-timeout": 45.0,
        "limits": Limits(
            max_queue=7, max_connections=50, max_slots=8, queue_timeout=1.5, request_timeout=9.0, max_body_bytes=100,
            max_header_bytes=1000, header_timeout=2.0, body_timeout=3.0, idle_timeout=20.0,
            attach_timeout=2.5, retry_after=11, retries=0, stop_timeout=4.0, stall_timeout=45.0,
        ),
    }


def test_hub_token_from_environment(monkeypatch):
    """
    POTHEAD_TOKEN sets the token when no file is named.
    """
    monkeypatch.setenv("POTHEAD_TOKEN", "from-env")
    assert parse(hub_tap.Options)["token"] == "from-env"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--attach-timeout", "0"], "attach-timeout"),
        (["--max-header-size", "-1"], "max-header-size"),
        (["--max-queue", "0"], "max-queue"),
        (["--queue-timeout", "-2"], "queue-timeout"),
        (["--retries", "-1"], "retries"),
        (["--token-file", "/nonexistent/token"], "cannot read token file"),
        (["--legacy-worker", "tcp:3"], "allow-legacy-without-token"),
        (["--log-format", "xml"], "--log-format must be one of text, json, not 'xml'"),
        (["--pool", "a:prefix=x"], "--pool a:prefix=x: pool a: prefix 'x' must be a path"),
        (["--pool", "a", "--pool", "a"], "pool a defined twice"),
        (["--pools", "/nonexistent/pools"], "--pools /nonexistent/pools: No such file"),
        (["--pool", "a", "--legacy-worker", "tcp:3", "--allow-legacy-without-token"],
         "legacy workers serve the pool named default"),
    ],
)
def test_hub_bad_options(argv, message, monkeypatch):
    """
    Bad values are usage errors that say what is wrong; legacy workers
    are refused while a token is required, unless explicitly allowed.
    """
    monkeypatch.setenv("POTHEAD_TOKEN", "secret")
    with pytest.raises(usage.UsageError, match=message):
        hub_tap.Options().parseOptions(argv)


def test_worker_options(monkeypatch):
    """
    The worker's options, with the app resolved to the callable itself.
    """
    monkeypatch.delenv("POTHEAD_TOKEN", raising=False)
    assert parse(worker_tap.Options, "--app", "pothead.demo:app", "--slots", "3") == {
        "app": "pothead.demo:app",
        "app-dir": ".",
        "wsgi": demo_app,
        "hubs": ["tcp:127.0.0.1:4040"],
        "spread": "late",
        "resolve-interval": 5.0,
        "slots": 3,
        "admission": None,
        "poll-jobs": 0,
        "pools": ["default"],
        "token-file": None,
        "token": None,
        "attach-timeout": 10.0,
        "drain-timeout": 60.0,
        "upstream": None,
        "upstream-wait": 30.0,
        "upstream-health": None,
        "admin": None,
        "log-format": "text",
    }


def test_sidecar_worker_options(monkeypatch):
    """--upstream instead of --app: nothing is imported, one slot by default."""
    monkeypatch.delenv("POTHEAD_TOKEN", raising=False)
    options = parse(worker_tap.Options, "--upstream", "unix:/run/app.sock",
                    "--upstream-health", "/ready")
    assert (options["upstream"], options["slots"], options["upstream-health"]) == (
        "unix:/run/app.sock", 1, "/ready")
    assert "wsgi" not in options


def test_worker_serves_several_pools():
    """
    --pool repeats: the slots join every pool named, each once.
    """
    options = parse(worker_tap.Options, "--app", "pothead.demo:app", "--pool", "thumbs",
                    "--pool", "models", "--pool", "thumbs")
    assert options["pools"] == ["thumbs", "models"]


def test_worker_app_from_app_dir(tmp_path):
    """
    --app-dir is where the app's module is looked for.
    """
    (tmp_path / "my_pothead_app.py").write_text("def app(environ, start_response):\n    pass\n")
    options = parse(worker_tap.Options, "--app", "my_pothead_app:app", "--app-dir", str(tmp_path))
    assert options["wsgi"].__name__ == "app"


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "give --app module:app, or --upstream URL"),
        (["--app", "pothead.demo:app", "--upstream", "http://127.0.0.1:8000"], "one of them"),
        (["--upstream", "https://127.0.0.1:8000"], "expected http://HOST:PORT"),
        (["--upstream", "http://127.0.0.1:8000", "--processes", "2"], "--processes is for a WSGI"),
        (["--upstream", "http://127.0.0.1:8000", "--upstream-health", "health"], "must be a path"),
        (["--upstream", "http://127.0.0.1:8000", "--upstream-wait", "0"], "upstream-wait"),
        (["--app", "pothead.demo"], "must look like module:app"),
        (["--app", "no_such_module_xyz:app"], "No such WSGI application: cannot import"),
        (["--app", "pothead.demo:nope"], "No such WSGI application: module 'pothead.demo' has no 'nope'"),
        (["--app", "pothead.demo:__doc__"], "is not callable"),
        (["--app", "pothead.demo:app", "--slots", "0"], "slots"),
        (["--app", "pothead.demo:app", "--processes", "2", "--admin", "tcp:0"],
         "--admin serves one worker process"),
    ],
)
def test_worker_bad_options(argv, message):
    """
    A bad --app or slot count is a clear usage error at startup.
    """
    with pytest.raises(usage.UsageError, match=message):
        worker_tap.Options().parseOptions(argv)


def test_hub_service_wiring():
    """
    The hub service has one listener per consumer and worker endpoint,
    each bounded by its side's connection limit.
    """
    options = hub_tap.Options()
    options.parseOptions(["--consumer", "tcp:0", "--consumer", "tcp:0", "--worker", "tcp:0",
                          "--max-connections", "300", "--max-slots", "20"])
    service = hub_tap.makeService(options)
    consumers, workers = list(service.consumers), list(service.workers)
    assert (len(consumers), len(workers)) == (2, 1)
    assert all(isinstance(child, Listener) for child in consumers + workers)
    assert service.hub.consumer_connections.maximum == 300
    assert service.hub.worker_connections.maximum == 20 + ATTACH_MARGIN


def test_worker_service_wiring():
    """
    The worker service has a thread pool sized to its slots, the slots,
    and the set of hubs that offers them (one ClientService per slot and
    hub once it starts, see test_hubs); with --spread even, one
    ClientService per slot at once.
    """
    options = worker_tap.Options()
    options.parseOptions(["--app", "pothead.demo:app", "--slots", "4"])
    service = worker_tap.makeService(options)
    children = list(service)
    pools = [c for c in children if isinstance(c, AppThreadsService)]
    assert len(pools) == 1 and pools[0].pool.count == 4
    assert len(service.slots) == 4 and sum(isinstance(c, HubSet) for c in children) == 1
    even = worker_tap.Options()
    even.parseOptions(["--app", "pothead.demo:app", "--slots", "4", "--spread", "even",
                       "--hub", "tcp:127.0.0.1:4040", "--hub", "tcp:127.0.0.1:4041"])
    offers = [c for c in worker_tap.makeService(even) if isinstance(c, HubOffers)]
    assert sum(isinstance(c, ClientService) for o in offers for c in o) == 4


def test_plugins_discovered():
    """
    twistd finds both commands, each a proper IServiceMaker plugin.
    """
    import twisted.plugins.pothead_plugins as plugins

    for maker in (plugins.pothead_hub, plugins.pothead_worker):
        assert verifyObject(IPlugin, maker)
        assert verifyObject(IServiceMaker, maker)
    names = {p.tapname for p in getPlugins(IServiceMaker)}
    assert {"pothead-hub", "pothead-worker"} <= names


def test_no_init_files_in_twisted_dirs():
    """
    Neither twisted/ nor twisted/plugins/ has an __init__.py: either would
    shadow Twisted's own package once installed.
    """
    assert not (ROOT / "twisted" / "__init__.py").exists()
    assert not (ROOT / "twisted" / "plugins" / "__init__.py").exists()
