"""
The hub's access log file: one combined-format line per request, written
in blocks, never more than a second late, and complete when the hub stops.
"""

from __future__ import annotations

import re

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from pothead.hub.access_log import BUFFER_BYTES, FLUSH_DELAY, BufferedLogFile
from tests.harness import wait_for
from tests.http import fetch
from tests.loopback import start_hub


@pytest.mark.unit
def test_lines_reach_the_file_within_the_flush_delay(tmp_path):
    path = tmp_path / "access.log"
    clock = Clock()
    log = BufferedLogFile(str(path), clock)
    log.write("first\n")
    log.write("second\n")
    assert path.read_text() == ""
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(FLUSH_DELAY)
    assert path.read_text() == "first\nsecond\n"
    assert clock.getDelayedCalls() == []
    log.write("third\n")
    clock.advance(FLUSH_DELAY)
    assert path.read_text() == "first\nsecond\nthird\n"
    log.close()


@pytest.mark.unit
def test_a_full_buffer_is_written_at_once(tmp_path):
    path = tmp_path / "access.log"
    log = BufferedLogFile(str(path), Clock())
    line = "x" * 99 + "\n"
    for _ in range(2 * BUFFER_BYTES // len(line)):
        log.write(line)
    assert path.stat().st_size >= BUFFER_BYTES // 2
    log.close()


@pytest.mark.unit
def test_close_writes_what_is_left_and_cancels_the_timer(tmp_path):
    path = tmp_path / "access.log"
    path.write_text("earlier\n")
    clock = Clock()
    log = BufferedLogFile(str(path), clock)
    log.write("last\n")
    log.close()
    assert path.read_text() == "earlier\nlast\n"
    assert clock.getDelayedCalls() == []


@pytest.mark.net
@pytest_twisted.ensureDeferred
async def test_hub_logs_each_request_to_its_access_log_file(tmp_path):
    """
    A hub started with an access log path writes a combined-format line per
    request there, within a second, and the rest when it stops.
    """
    path = tmp_path / "access.log"
    running = await start_hub(access_log=str(path))
    try:
        await running.add_worker(_answer_ok)
        response, body = await fetch("GET", f"{running.url}/first?x=1")
        assert (response.code, body) == (200, b"ok")
        await wait_for(lambda: path.exists() and "/first" in path.read_text(),
                       timeout=FLUSH_DELAY + 5, what="the access log line")
        line = path.read_text().splitlines()[-1]
        assert '"GET /first?x=1 HTTP/1.1" 200 2' in line
        assert re.search(r' queue=\d+\.\d{3} worker=\d+\.\d{3} worker_name="[^"]+@127\.0\.0\.1:\d+"'
                         r' pool=default$', line), line
        assert line.startswith('"127.0.0.1" - - [')
        await fetch("GET", f"{running.url}/second")
    finally:
        await running.stop()
    assert '"GET /second HTTP/1.1" 200 2' in path.read_text()


def _answer_ok(environ, start_response):
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]
