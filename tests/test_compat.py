"""
POTHEAD 0.4.3 compatibility, with real processes: its command lines, a
real 0.4.3 worker through --legacy-worker, and CPU-gated admission.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import venv

import pytest

from pothead.compat import server_argv, worker_argv
from tests.processes import Process, Twistd, get, get_eventually, start_hub


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]




@pytest.mark.unit
def test_compat_command_lines_translate():
    """
    0.4.3's arguments map to the equivalent twistd command lines.
    """
    assert server_argv(["--main-port", "81", "--worker-port", "41"])[-5:] == [
        "pothead-hub", "--consumer", "tcp:81", "--worker", "tcp:41",
    ]
    assert worker_argv(["--connect", "hub:41", "--workers", "3", "m:app"], {})[-7:] == [
        "pothead-worker", "--app", "m:app", "--hub", "tcp:hub:41", "--slots", "3",
    ]
    assert worker_argv([], {"POTHEAD_WORKERS": "5"})[-1] == "5"
    assert worker_argv(["--poll-jobs", "m:app"], {})[-1] == "--poll-jobs"


@pytest.mark.process
def test_compat_command_lines_run(tmp_path, started):
    """
    python3 -m pothead.server and python3 -m pothead.worker, with 0.4.3's
    arguments, serve a request.
    """
    main_port, worker_port = free_port(), free_port()
    started.append(Process(
        [sys.executable, "-m", "pothead.server", "--main-port", str(main_port),
         "--worker-port", str(worker_port)], tmp_path))
    started.append(Process(
        [sys.executable, "-m", "pothead.worker", "--connect", f"127.0.0.1:{worker_port}",
         "pothead.demo:app"], tmp_path, env={"POTHEAD_WORKERS": "2"}))
    status, body = get_eventually(f"http://127.0.0.1:{main_port}/?width=10&height=3")
    assert status == 200 and b"rendered by pid" in body
    started[0].wait_for(r"attached to pool default", count=2)


@pytest.mark.process
def test_cpu_gated_worker_serves(tmp_path, started):
    """
    A worker started with --admission cpu:... attaches a slot and serves.
    """
    hub, (consumer, worker) = start_hub(tmp_path)
    started.append(hub)
    started.append(Twistd("pothead-worker", "--app", "pothead.demo:app", "--hub",
                            f"tcp:127.0.0.1:{worker}", "--admission", "cpu:0.5,max=2",
                            cwd=tmp_path))
    hub.wait_for(r"attached to pool default")
    for _ in range(3):
        assert get_eventually(f"http://127.0.0.1:{consumer}/?width=10&height=3")[0] == 200


LEGACY_APP = """
def app(environ, start_response):
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    answer = b"legacy " + environ["REQUEST_METHOD"].encode() + b" " + body
    start_response("201 Created", [("Content-Type", "text/plain"),
                                   ("Content-Length", str(len(answer))),
                                   ("X-Legacy", "yes")])
    return [answer]
"""


@pytest.fixture(scope="session")
def pothead_043(tmp_path_factory):
    """
    A throwaway venv with the real POTHEAD 0.4.3 from PyPI.
    """
    where = tmp_path_factory.mktemp("pothead043")
    venv.create(where / "venv", with_pip=True)
    python = where / "venv" / "bin" / "python"
    result = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "POTHEAD==0.4.3"],
        capture_output=True, text=True, timeout=300,
    )
    if result.returncode != 0:
        pytest.skip(f"POTHEAD 0.4.3 could not be installed: {result.stderr[-500:]}")
    return python


@pytest.mark.process
def test_real_pothead_043_worker_through_legacy_port(tmp_path, started, pothead_043):
    """
    A real POTHEAD 0.4.3 worker, connected to --legacy-worker, answers
    requests with its status, headers and body intact.
    """
    (tmp_path / "legacy_app.py").write_text(LEGACY_APP)
    legacy = free_port()
    hub, (consumer, _) = start_hub(
        tmp_path, "--legacy-worker", f"tcp:{legacy}:interface=127.0.0.1")
    started.append(hub)
    worker = Process(
        [str(pothead_043), "-m", "pothead.worker", "--connect", f"127.0.0.1:{legacy}",
         "legacy_app:app"], tmp_path)
    started.append(worker)
    try:
        hub.wait_for(r"legacy worker .* connected", timeout=30)
    except AssertionError:
        if worker.process.poll() is not None:
            pytest.skip(f"the POTHEAD 0.4.3 worker does not start here: {worker.output[-800:]}")
        raise
    for body in (b"one", b"two"):
        status, answer = get(f"http://127.0.0.1:{consumer}/x", data=body, method="POST")
        assert (status, answer) == (201, b"legacy POST " + body)
