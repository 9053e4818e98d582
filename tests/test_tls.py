"""
TLS on the worker port, end to end (issue 16, item 6): a hub process
listening for workers with an C{ssl:} server endpoint, its certificate
issued by a CA made in the test (trustme), and ``twistd pothead-worker``
processes connecting with C{tls:} client endpoints that verify it against
a directory of trusted PEM certificates, as docs/operations.md ("Tokens
and TLS") tells an operator to set them up.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from twisted.internet.endpoints import quoteStringArgument

from tests.processes import Twistd, get

pytestmark = pytest.mark.process

TOKEN = "tls-e2e-secret"

#: What the worker logs, once per attempt, when a slot's connection ends
#: before the hub accepted its attach (pothead/worker/attach_client.py).
NOT_ATTACHED = r"slot \S+ not attached: "


@dataclass
class Pki:
    """
    The files of one test's PKI, all under its tmp_path.

    :ivar key: the hub's private key.
    :ivar cert: the hub's certificate, for 127.0.0.1 and localhost.
    :ivar trusted: a directory holding the PEM of the CA that issued it.
    :ivar untrusted: a directory holding the PEM of another CA only.
    :ivar token: the token file both sides are given.
    """

    key: Path
    cert: Path
    trusted: Path
    untrusted: Path
    token: Path


@pytest.fixture
def pki(tmp_path) -> Pki:
    ca = trustme.CA()
    # Twisted's tls: client endpoint checks the certificate against the host
    # it connects to, here the IP address, so that must be an IP SAN.
    issued = ca.issue_cert("127.0.0.1", "localhost")
    files = Pki(
        key=tmp_path / "hub.key",
        cert=tmp_path / "hub.pem",
        trusted=tmp_path / "ca",
        untrusted=tmp_path / "other-ca",
        token=tmp_path / "token",
    )
    issued.private_key_pem.write_to_path(str(files.key))
    issued.cert_chain_pems[0].write_to_path(str(files.cert))
    files.trusted.mkdir()
    ca.cert_pem.write_to_path(str(files.trusted / "ca.pem"))
    files.untrusted.mkdir()
    trustme.CA().cert_pem.write_to_path(str(files.untrusted / "ca.pem"))
    files.token.write_text(TOKEN + "\n")
    return files




def start_tls_hub(cwd: Path, pki: Pki, started: list[Twistd]) -> tuple[Twistd, int, int]:
    """
    A hub on loopback whose consumer port is plain TCP and whose worker
    port is TLS with the test's certificate, requiring the test's token.

    (tests.processes.start_hub listens for workers on tcp: and reads the
    port from "WorkerPortFactory starting on"; an ssl: port's factory is
    Twisted's TLS wrapper, which logs "WorkerPortFactory (TLS) starting on".)

    :return: the hub, its consumer port and its worker port.
    """
    worker_endpoint = (
        "ssl:0:interface=127.0.0.1"
        f":privateKey={quoteStringArgument(str(pki.key))}"
        f":certKey={quoteStringArgument(str(pki.cert))}"
    )
    hub = Twistd(
        "pothead-hub",
        "--consumer", "tcp:0:interface=127.0.0.1",
        "--worker", worker_endpoint,
        "--token-file", str(pki.token),
        cwd=cwd,
    )
    started.append(hub)
    consumer = int(hub.wait_for(r"ConsumerFactory starting on (\d+)")[0].group(1))
    worker = int(hub.wait_for(r"WorkerPortFactory \(TLS\) starting on (\d+)")[0].group(1))
    return hub, consumer, worker


def start_worker(cwd: Path, pki: Pki, started: list[Twistd], hub_endpoint: str) -> Twistd:
    """
    A one-slot demo worker with the token, attaching to C{hub_endpoint}.
    """
    worker = Twistd(
        "pothead-worker", "--app", "pothead.demo:app", "--slots", "1",
        "--hub", hub_endpoint, "--token-file", str(pki.token),
        cwd=cwd,
    )
    started.append(worker)
    return worker


def tls_endpoint(port: int, trust_roots: Path) -> str:
    return f"tls:127.0.0.1:{port}:trustRoots={quoteStringArgument(str(trust_roots))}"


def attach_lines(hub: Twistd, worker: Twistd | None = None) -> list[str]:
    """
    The hub's "attached" lines, all or only C{worker}'s (a worker's slots
    are named host/pid/index, pothead/worker/service.py).
    """
    who = r"\S+" if worker is None else rf"[^/\s]+/{worker.process.pid}/\d+"
    pattern = re.compile(rf"worker {who}@\S+ attached to pool default")
    return [line for line in list(hub.lines) if pattern.search(line)]


def rendered_by(consumer: int) -> int:
    """
    GET the demo picture through the hub; return the pid that rendered it.
    """
    status, body = get(f"http://127.0.0.1:{consumer}/?width=8&height=2")
    assert status == 200, body
    match = re.search(rb"rendered by pid (\d+)", body)
    assert match, body
    return int(match.group(1))


def test_worker_trusting_the_ca_serves_over_tls(tmp_path, pki, started):
    """
    A worker on tls: whose trustRoots hold the CA that issued the hub's
    certificate verifies the hub, attaches through the TLS-only worker
    port, and renders the request a consumer sends to the plain-TCP
    consumer port.
    """
    hub, consumer, worker_port = start_tls_hub(tmp_path, pki, started)
    worker = start_worker(tmp_path, pki, started, tls_endpoint(worker_port, pki.trusted))
    hub.wait_for(r"attached to pool default")
    assert len(attach_lines(hub, worker)) == 1
    # The demo app names its process: the TLS worker, the only one there is.
    assert rendered_by(consumer) == worker.process.pid
    assert not re.search(NOT_ATTACHED, worker.output), worker.output


def test_worker_with_wrong_ca_never_attaches(tmp_path, pki, started):
    """
    A worker whose trustRoots hold another CA is turned away on every
    attempt and keeps trying (it backs off, it does not exit), while the
    hub goes on serving through the worker that trusts it.
    """
    hub, consumer, worker_port = start_tls_hub(tmp_path, pki, started)
    good = start_worker(tmp_path, pki, started, tls_endpoint(worker_port, pki.trusted))
    hub.wait_for(r"attached to pool default")
    wrong = start_worker(tmp_path, pki, started, tls_endpoint(worker_port, pki.untrusted))
    # Each failed attempt is an event in the wrong worker's log; two of them
    # show it retried, and was refused again, rather than attached.
    wrong.wait_for(NOT_ATTACHED, count=2, timeout=10)
    assert attach_lines(hub, wrong) == []
    assert len(attach_lines(hub)) == 1
    assert rendered_by(consumer) == good.process.pid
    assert hub.process.poll() is None
    assert wrong.process.poll() is None, wrong.output
    # Every attach, the request's aftermath included, is the good worker's.
    assert attach_lines(hub) == attach_lines(hub, good)


def test_worker_with_wrong_ca_says_certificate_verify_failed(tmp_path, pki, started):
    """
    The wrong-CA worker's log names the reason, certificate verification,
    in the line docs/operations.md quotes, so that an operator reading it
    knows to fix trustRoots rather than the network or the token.
    """
    hub, _, worker_port = start_tls_hub(tmp_path, pki, started)
    wrong = start_worker(tmp_path, pki, started, tls_endpoint(worker_port, pki.untrusted))
    line = wrong.wait_for(NOT_ATTACHED + r"(.*)", timeout=10)[0]
    assert "connection lost while attaching" in line.group(1)
    assert "certificate verify failed" in line.group(1), line.string
    assert attach_lines(hub) == []


def test_plain_tcp_worker_on_tls_port_is_dropped(tmp_path, pki, started):
    """
    A worker that connects with plain tcp: to the ssl: worker port is
    dropped, the token it sent in clear never reaching the attach
    handshake, and the hub keeps serving through its TLS worker.
    """
    hub, consumer, worker_port = start_tls_hub(tmp_path, pki, started)
    good = start_worker(tmp_path, pki, started, tls_endpoint(worker_port, pki.trusted))
    hub.wait_for(r"attached to pool default")
    plain = start_worker(tmp_path, pki, started, f"tcp:127.0.0.1:{worker_port}")
    plain.wait_for(NOT_ATTACHED, count=2, timeout=10)
    assert attach_lines(hub, plain) == []
    # The hub's TLS layer dropped the bytes before any HTTP was parsed: no
    # attach was refused (that would be a 401 or 400 line), none accepted.
    assert not re.search(r"refused attach", hub.output), hub.output
    assert rendered_by(consumer) == good.process.pid
    assert hub.process.poll() is None
