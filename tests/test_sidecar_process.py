"""
The sidecar worker as users run it: ``twistd -n pothead-worker --upstream
URL`` in front of a real HTTP server, through a ``twistd`` hub.
"""

from __future__ import annotations

import pytest

from tests.processes import Twistd, get_eventually, start_hub
from tests.test_sidecar import stdlib_server  # noqa: F401  (a fixture)

pytestmark = pytest.mark.process


def test_a_sidecar_worker_from_the_command_line(tmp_path, started, request):
    upstream = request.getfixturevalue("stdlib_server")
    hub, (consumer, worker_port) = start_hub(tmp_path)
    started.append(hub)
    worker = Twistd(
        "pothead-worker", "--upstream", f"http://127.0.0.1:{upstream}", "--slots", "2",
        "--upstream-health", "/health", "--hub", f"tcp:127.0.0.1:{worker_port}", cwd=tmp_path,
    )
    started.append(worker)
    hub.wait_for(r"attached to pool default", count=2)
    status, body = get_eventually(f"http://127.0.0.1:{consumer}/hello?x=1")
    assert (status, body) == (200, b"stdlib /hello?x=1")
    assert worker.stop() == 0
