"""
Failover between hubs, with real processes: a worker whose slots are
offered to two hubs keeps serving the survivor when one is killed under
load, and is back at the killed one soon after it restarts.
"""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.processes import Twistd, get, get_eventually, start_hub

pytestmark = pytest.mark.process

#: Requests sent to the surviving hub while the other one dies.
LOAD = 60




def test_hub_killed_under_load(tmp_path, started):
    """
    Jobs queued at hub B are all answered while hub A is SIGKILLed; when A
    is started again on the same ports the worker serves through it
    within a few seconds, without being restarted.
    """
    a, a_ports = start_hub(tmp_path)
    b, b_ports = start_hub(tmp_path)
    started += [a, b]
    worker = Twistd(
        "pothead-worker", "--app", "tests.apps.faults:app", "--slots", "2",
        "--hub", f"tcp:127.0.0.1:{a_ports[1]}", "--hub", f"tcp:127.0.0.1:{b_ports[1]}",
        cwd=tmp_path, env={"POTHEAD_TEST_LOG": str(tmp_path / "calls"), "PYTHONPATH": os.getcwd()},
    )
    started.append(worker)
    for ports in (a_ports, b_ports):
        assert get_eventually(f"http://127.0.0.1:{ports[0]}/warm")[0] == 200

    with ThreadPoolExecutor(16) as pool:
        # 20 ms of work each: more than two slots can take at once, so
        # jobs queue at B while A dies.
        answers = [
            pool.submit(get, f"http://127.0.0.1:{b_ports[0]}/b{n}?sleep=0.02", 30)
            for n in range(LOAD)
        ]
        time.sleep(0.2)
        a.stop(signal.SIGKILL)
        statuses = [answer.result(timeout=60)[0] for answer in answers]
    assert statuses == [200] * LOAD
    served = (tmp_path / "calls").read_text().splitlines()
    assert sorted(line.split()[-1] for line in served if "/b" in line) == sorted(
        f"/b{n}" for n in range(LOAD)
    )

    restarted_at = time.monotonic()
    a, _ = start_hub(tmp_path, ports=a_ports)
    started.append(a)
    assert get_eventually(f"http://127.0.0.1:{a_ports[0]}/back", timeout=10)[0] == 200
    assert time.monotonic() - restarted_at < 10
    assert worker.process.poll() is None
