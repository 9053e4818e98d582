"""
The real commands, as a user runs them: ``twistd pothead-hub`` and
``twistd pothead-worker`` from the installed package, in subprocesses.
"""

from __future__ import annotations

import signal
import subprocess

import pytest

from tests.processes import TWISTD, Twistd, get, get_eventually, start_hub

pytestmark = pytest.mark.process




def test_twistd_lists_both_commands(tmp_path):
    """
    The installed twistd knows both commands, outside the source tree.
    """
    for command in ("pothead-hub", "pothead-worker"):
        result = subprocess.run(
            [TWISTD, command, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert f"Usage: twistd [options] {command}" in result.stdout


def test_demo_request_answered(tmp_path, started):
    """
    A request to the hub is answered by the demo worker's app.
    """
    hub, (consumer, worker) = start_hub(tmp_path)
    started.append(hub)
    started.append(
        Twistd("pothead-worker", "--app", "pothead.demo:app", "--hub", f"tcp:127.0.0.1:{worker}",
               "--slots", "2", cwd=tmp_path)
    )
    hub.wait_for(r"attached to pool default", count=2)
    status, body = get(f"http://127.0.0.1:{consumer}/?width=20&height=5")
    assert status == 200
    assert b"rendered by pid" in body


def test_worker_survives_hub_restart(tmp_path, started):
    """
    When the hub is killed and started again, the worker reattaches and
    serves within a few seconds, without being restarted.
    """
    hub, ports = start_hub(tmp_path)
    started.append(hub)
    worker = Twistd("pothead-worker", "--app", "pothead.demo:app", "--hub",
                    f"tcp:127.0.0.1:{ports[1]}", cwd=tmp_path)
    started.append(worker)
    hub.wait_for(r"attached to pool default")
    assert get(f"http://127.0.0.1:{ports[0]}/?width=8&height=2")[0] == 200
    hub.stop(signal.SIGKILL)

    hub, _ = start_hub(tmp_path, ports=ports)
    started.append(hub)
    hub.wait_for(r"attached to pool default", timeout=10)
    assert get_eventually(f"http://127.0.0.1:{ports[0]}/?width=8&height=2", timeout=10)[0] == 200
    assert worker.process.poll() is None


def test_token_required_end_to_end(tmp_path, started):
    """
    A hub with a token refuses a worker without it and serves through a
    worker that has it.
    """
    token = tmp_path / "token"
    token.write_text("e2e-secret\n")
    hub, (consumer, worker) = start_hub(tmp_path, "--token-file", str(token))
    started.append(hub)
    started.append(Twistd("pothead-worker", "--app", "pothead.demo:app", "--hub",
                          f"tcp:127.0.0.1:{worker}", cwd=tmp_path, env={"POTHEAD_TOKEN": "wrong"}))
    hub.wait_for(r"refused attach from .*401")
    started.append(Twistd("pothead-worker", "--app", "pothead.demo:app", "--hub",
                          f"tcp:127.0.0.1:{worker}", cwd=tmp_path, env={"POTHEAD_TOKEN": "e2e-secret"}))
    hub.wait_for(r"attached to pool default")
    assert get(f"http://127.0.0.1:{consumer}/?width=8&height=2")[0] == 200


def test_bad_app_is_a_startup_error(tmp_path):
    """
    A worker whose --app cannot be imported exits at once with a message
    naming the problem.
    """
    result = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "pothead-worker", "--app", "no_such_module_here:app"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert "No such WSGI application" in result.stdout + result.stderr


def test_busy_port_is_a_startup_error(tmp_path, started):
    """
    A hub that cannot bind its port exits with an error instead of running
    without listening.
    """
    hub, (consumer, _) = start_hub(tmp_path)
    started.append(hub)
    second = Twistd("pothead-hub", "--consumer", f"tcp:{consumer}:interface=127.0.0.1",
                    "--worker", "tcp:0:interface=127.0.0.1", cwd=tmp_path)
    started.append(second)
    assert second.process.wait(30) != 0
    second.stop()
    assert "CannotListenError" in second.output or "Address already in use" in second.output


def make_certificate(directory) -> None:
    import shutil

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
         str(directory / "key.pem"), "-out", str(directory / "cert.pem"), "-days", "2",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
        check=True, capture_output=True, timeout=60,
    )
    (directory / "ca").mkdir()
    (directory / "ca" / "cert.pem").write_bytes((directory / "cert.pem").read_bytes())


def test_tls_worker_port(tmp_path, started):
    """
    Over TLS, a worker that trusts the hub's certificate attaches and
    serves; one that does not trust it never attaches.
    """
    make_certificate(tmp_path)
    hub = Twistd(
        "pothead-hub", "--consumer", "tcp:0:interface=127.0.0.1",
        "--worker", "ssl:0:interface=127.0.0.1:privateKey=key.pem:certKey=cert.pem",
        cwd=tmp_path,
    )
    started.append(hub)
    consumer = int(hub.wait_for(r"ConsumerFactory starting on (\d+)")[0].group(1))
    worker_port = int(hub.wait_for(r"WorkerPortFactory \(TLS\) starting on (\d+)")[0].group(1))
    distrustful = Twistd("pothead-worker", "--app", "pothead.demo:app",
                         "--hub", f"tls:localhost:{worker_port}", cwd=tmp_path)
    started.append(distrustful)
    distrustful.wait_for(r"not attached")
    started.append(Twistd("pothead-worker", "--app", "pothead.demo:app",
                          "--hub", f"tls:localhost:{worker_port}:trustRoots=ca", cwd=tmp_path))
    hub.wait_for(r"attached to pool default")
    assert hub.output.count("attached to pool default") == 1
    assert get(f"http://127.0.0.1:{consumer}/?width=8&height=2")[0] == 200
