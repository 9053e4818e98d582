"""
The hub's status page (issue 18) in a real headless Chromium, against a
live hub and worker: the numbers it renders for queued work, its slots
table (escaped, coloured, sortable at 200 slots), how fast it loads, its
stale state once the hub is gone; screenshots kept in tests/artifacts/.

Chromium is driven through the DevTools protocol on a pipe
(C{--remote-debugging-pipe}: JSON messages ending in NUL on descriptors 3
and 4), which needs nothing but the standard library and lets a test wait
for the page's script instead of guessing a time budget.  Without a
C{chromium} on the PATH these tests skip, unless C{POTHEAD_REQUIRE_CHROMIUM=1}
(set by .ci/run, which installs Debian's C{chromium}) makes them fail.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import select
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.processes import PROCESS_WAIT, Twistd, get, start_hub, wait_until

pytestmark = pytest.mark.process

ROOT = Path(__file__).parent.parent

#: Where the screenshots are kept (gitignored), for a person to look at.
ARTIFACTS = ROOT / "tests" / "artifacts"

#: How the page writes a duration below a minute.
DURATION = r"\d+(\.\d)? ms|\d+\.\d s"

#: The page's colour for a busy slot (--busy in status_page.html).
BUSY_COLOUR = "rgb(217, 119, 6)"


class Chromium:
    """
    A headless Chromium with one page, driven over the DevTools protocol.
    """

    def __init__(self, executable: str, profile: Path, log: Path) -> None:
        commands, self._commands = os.pipe()
        self._answers, answers = os.pipe()

        def on_descriptors_3_and_4() -> None:
            # Chromium reads commands on 3 and writes answers on 4; each
            # pipe end is first copied above 4, so that neither is
            # overwritten by the other.
            read, write = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (commands, answers))
            os.dup2(read, 3)
            os.dup2(write, 4)

        self._log = log
        with open(log, "wb") as stderr:
            self.process = subprocess.Popen(
                [executable, "--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
                 "--hide-scrollbars", "--window-size=1280,900", f"--user-data-dir={profile}",
                 "--remote-debugging-pipe", "about:blank"],
                stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr,
                pass_fds=(3, 4), preexec_fn=on_descriptors_3_and_4,
            )
        os.close(commands)
        os.close(answers)
        self._buffer = b""
        self._next_id = 0
        self._session = None
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self._session = self.send("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"]
        self.send("Emulation.setDeviceMetricsOverride", width=1280, height=900,
                  deviceScaleFactor=1, mobile=False)

    def _message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._answers], [], [], left)[0]:
                raise AssertionError(f"no answer from chromium; its log:\n{self.log()}")
            chunk = os.read(self._answers, 1 << 20)
            if not chunk:
                raise AssertionError(f"chromium closed its pipe; its log:\n{self.log()}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, **params) -> dict:
        """
        Send one command (to the page, once attached) and return its
        result; events met on the way are dropped.
        """
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if self._session is not None and not method.startswith(("Browser.", "Target.")):
            message["sessionId"] = self._session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + PROCESS_WAIT
        while True:
            answer = self._message(deadline)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise AssertionError(f"{method}: {answer['error']}")
                return answer["result"]

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, what: str, timeout: float = PROCESS_WAIT):
        """Poll C{expression} every 20 ms until it is true; return it."""
        deadline = time.monotonic() + timeout
        while not (value := self.evaluate(expression)):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(0.02)
        return value

    def open(self, url: str) -> float:
        """
        Load C{url} and wait for the page's first rendering of the hub's
        status; return the milliseconds it took, by the page's own clock
        (from the start of its navigation).
        """
        self.send("Page.navigate", url=url)
        return self.wait_for(
            "document.body && document.body.className === 'live' && performance.now()",
            f"{url} to render the hub's status")

    def screenshot(self, name: str) -> Path:
        """Save what the window shows as tests/artifacts/C{name}; say where."""
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / name
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"]))
        print(f"status page screenshot: {path}")
        return path

    def log(self) -> str:
        return self._log.read_text(errors="replace")[-4000:]

    def close(self) -> None:
        try:
            self.send("Browser.close")
            self.process.wait(PROCESS_WAIT)
        except (AssertionError, OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait(PROCESS_WAIT)
        finally:
            os.close(self._commands)
            os.close(self._answers)


@pytest.fixture
def chromium(tmp_path):
    """
    A headless Chromium, closed after the test; the test skips if there is
    none, or fails if C{POTHEAD_REQUIRE_CHROMIUM=1}.
    """
    executable = shutil.which("chromium")
    if executable is None:
        reason = "no chromium on the PATH (.ci/run installs Debian's chromium package)"
        if os.environ.get("POTHEAD_REQUIRE_CHROMIUM") == "1":
            pytest.fail(reason + ", and POTHEAD_REQUIRE_CHROMIUM=1 requires it")
        pytest.skip(reason)
    browser = Chromium(executable, tmp_path / "chromium-profile", tmp_path / "chromium.log")
    yield browser
    browser.close()


def hub_with_worker(tmp_path, started, slots: int):
    """
    A hub with its admin port, and a worker of C{slots} slots serving
    tests.apps.faults, all attached.

    :return: the hub process, its consumer URL and its admin URL.
    """
    hub, (consumer, worker) = start_hub(tmp_path, "--admin", "tcp:0:interface=127.0.0.1")
    started.append(hub)
    admin = int(hub.wait_for(r"Site starting on (\d+)")[0].group(1))
    started.append(Twistd(
        "pothead-worker", "--app", "tests.apps.faults:app", "--slots", str(slots),
        "--hub", f"tcp:127.0.0.1:{worker}", cwd=tmp_path,
        env={"POTHEAD_TEST_LOG": str(tmp_path / "calls"), "PYTHONPATH": str(ROOT)},
    ))
    admin_url = f"http://127.0.0.1:{admin}/"
    wait_until(lambda: len(pool_status(admin_url)["slots"]) == slots,
               what=f"{slots} slots attached")
    return hub, f"http://127.0.0.1:{consumer}", admin_url


def pool_status(admin_url: str) -> dict:
    """The default pool in the hub's /status.json."""
    status, body = get(admin_url + "status.json")
    assert status == 200, body
    return json.loads(body)["pools"]["default"]


#: What the page shows of its first pool: each headline number's text and
#: data-value, each slot row (state, cells by class, its HTML), the charts'
#: paths, and the colour of a slot's state.
READ_POOL = """(() => {
  const sec = document.querySelector('section.pool[data-pool="default"]');
  const number = cls => { const el = sec.querySelector('.numbers .' + cls);
                          return [el.textContent, el.dataset.value]; };
  return {
    pools: [...document.querySelectorAll('section.pool')].map(s => s.dataset.pool),
    numbers: Object.fromEntries(['queued', 'oldest', 'attached', 'idle', 'busy', 'elsewhere',
                                 'p50', 'p95'].map(cls => [cls, number(cls)])),
    rows: [...sec.querySelectorAll('tbody tr')].map(tr => ({
      state: tr.dataset.state, html: tr.innerHTML,
      cells: Object.fromEntries([...tr.cells].map(td => [td.className, td.textContent]))})),
    depth: sec.querySelector('.chart-depth path.queued').getAttribute('d'),
    p50: sec.querySelector('.chart-wait path.p50').getAttribute('d'),
    colour: getComputedStyle(sec.querySelector('tbody td.state'), '::before').backgroundColor,
  };
})()"""


def test_queued_work_as_the_page_shows_it(tmp_path, started, chromium):
    """
    With one slot busy and three jobs queued behind it, the page shows
    queued 3, one busy slot coloured busy with its job's path as text, the
    wait percentiles of the interval in which a job last stopped waiting,
    and both charts; once the hub is gone it says it is unreachable.
    """
    hub, consumer, admin = hub_with_worker(tmp_path, started, slots=1)
    gates = {name: tmp_path / f"gate-{name}" for name in ("a", "b", "rest")}
    paths = {
        "a": f"/a?gate={gates['a']}",
        "b": f"/b?gate={gates['b']}",
        # Markup in a path must show as text, never become elements.
        **{name: f"/{name}?gate={gates['rest']}&x=<b>bold</b>" for name in "cdef"},
    }
    with ThreadPoolExecutor(len(paths)) as consumers:
        try:
            answers = [consumers.submit(get, consumer + paths["a"], 60)]
            wait_until(lambda: pool_status(admin)["slots"][0]["state"] == "busy", what="a taken")
            # One at a time, so that they queue in this order.
            for queued, name in enumerate("bcdef", 1):
                answers.append(consumers.submit(get, consumer + paths[name], 60))
                wait_until(lambda n=queued: pool_status(admin)["queued"] == n, what=f"{name} queued")
            # a, then b, answered: c is taken, d to f wait, and b's wait is
            # in the interval in which b was answered.
            gates["a"].touch()
            wait_until(lambda: pool_status(admin)["queued"] == 4, what="b taken")
            gates["b"].touch()
            def settled() -> bool:
                pool = pool_status(admin)
                return (pool["queued"] == 3 and pool["slots"][0]["state"] == "busy"
                        and any(point["waits"] for point in pool["history"]["points"]))

            wait_until(settled, what="c taken, and an interval with a wait in the history")
            expected = pool_status(admin)
            assert expected["slots"][0]["job"]["path"] == paths["c"]

            chromium.open(admin)
            shown = chromium.evaluate(READ_POOL)
            chromium.screenshot("status_page.png")
        finally:
            for gate in gates.values():
                gate.touch()
        assert [answer.result(PROCESS_WAIT)[0] for answer in answers] == [200] * 6

    numbers = {name: text for name, (text, _) in shown["numbers"].items()}
    assert shown["pools"] == ["default"]
    assert {k: numbers[k] for k in ("queued", "attached", "idle", "busy", "elsewhere")} == {
        "queued": "3", "attached": "1", "idle": "0", "busy": "1", "elsewhere": "0"}
    assert re.fullmatch(DURATION, numbers["oldest"]), numbers
    last = [point for point in expected["history"]["points"] if point["waits"]][-1]
    assert float(shown["numbers"]["p50"][1]) == last["wait_p50_seconds"]
    assert float(shown["numbers"]["p95"][1]) == last["wait_p95_seconds"]
    assert re.fullmatch(DURATION, numbers["p50"]), numbers
    assert shown["depth"].startswith("M") and shown["p50"].startswith("M"), shown

    [row] = shown["rows"]
    slot = expected["slots"][0]
    assert row["state"] == "busy"
    assert row["cells"]["worker"] == slot["worker"]
    assert row["cells"]["peer"] == slot["peer"]
    assert row["cells"]["served"] == str(slot["jobs_served"])
    assert row["cells"]["job"] == "GET " + paths["c"]
    assert "&lt;b&gt;bold&lt;/b&gt;" in row["html"] and "<b>" not in row["html"]
    assert shown["colour"] == BUSY_COLOUR

    assert hub.stop() == 0
    chromium.wait_for("document.body.className === 'stale'", "the page to say it is stale")
    banner = chromium.evaluate("document.getElementById('stale').textContent")
    assert "hub unreachable" in banner
    # What it last read stays on the page, dimmed.
    assert chromium.evaluate(
        "document.querySelector('[data-pool=default] .queued').textContent") == "3"
    chromium.screenshot("status_page_stale.png")


def natural(text: str) -> list:
    """A sort key that orders the numbers in C{text} as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def test_two_hundred_slots_load_quickly_and_sort(tmp_path, started, chromium):
    """
    With 200 slots attached, 5 of them busy, the page shows all 200 rows
    within a second of loading (in a browser already running), sorted by
    worker, and sorts them by jobs served and by state when those headers
    are clicked, and back when clicked again.
    """
    hub, consumer, admin = hub_with_worker(tmp_path, started, slots=200)
    gate = tmp_path / "gate"
    with ThreadPoolExecutor(8) as consumers:
        # Some slots serve a few jobs first, so that they differ in jobs served.
        assert [a.result(PROCESS_WAIT)[0] for a in [
            consumers.submit(get, f"{consumer}/warm{n}?sleep=0.01", 60) for n in range(40)
        ]] == [200] * 40
        try:
            answers = [consumers.submit(get, f"{consumer}/busy{n}?gate={gate}", 60)
                       for n in range(5)]
            wait_until(lambda: sum(s["state"] == "busy" for s in pool_status(admin)["slots"]) == 5,
                       what="5 slots busy")
            # The first load warms the browser up; the second is timed.
            chromium.open(admin)
            loaded_ms = chromium.open(admin)
            print(f"status page with 200 slots rendered {loaded_ms:.0f} ms after navigation")
            assert loaded_ms < 1000
            chromium.screenshot("status_page_200_slots.png")

            column = ("[...document.querySelectorAll('[data-pool=default] tbody td.{}')]"
                      ".map(td => td.textContent)")
            click = "document.querySelector('[data-pool=default] th[data-key={}]').click()"
            workers = chromium.evaluate(column.format("worker"))
            assert len(workers) == 200
            assert workers == sorted(workers, key=natural)
            # Sorting is the page's own: it must survive the next refresh
            # (every 2 s), so the checks below read right after each click.
            chromium.evaluate(click.format("state"))
            states = chromium.evaluate(column.format("state"))
            assert states == ["busy"] * 5 + ["idle"] * 195
            chromium.evaluate(click.format("state"))
            assert chromium.evaluate(column.format("state")) == ["idle"] * 195 + ["busy"] * 5
            chromium.evaluate(click.format("served"))
            served = [int(n) for n in chromium.evaluate(column.format("served"))]
            assert served == sorted(served) and served[0] < served[-1]
            chromium.evaluate(click.format("served"))
            served = [int(n) for n in chromium.evaluate(column.format("served"))]
            assert served == sorted(served, reverse=True)
            shown_at = float(chromium.evaluate("document.body.dataset.time"))
            chromium.wait_for(f"Number(document.body.dataset.time) > {shown_at}", "a refresh")
            served = [int(n) for n in chromium.evaluate(column.format("served"))]
            assert served == sorted(served, reverse=True)
        finally:
            gate.touch()
        assert [answer.result(PROCESS_WAIT)[0] for answer in answers] == [200] * 5
    assert hub.stop() == 0
