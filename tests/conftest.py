"""
Shared fixtures: a hub (no workers) running in the test's reactor on
127.0.0.1, and a check that no test leaves timers behind; and the rule
that every test belongs to exactly one tier (see tests/README.md).

The helpers live in tests/harness.py and tests/loopback.py.
"""

from __future__ import annotations

import signal

import pytest
import pytest_twisted
from twisted.internet import reactor

from tests.loopback import start_hub

#: The tiers, as registered in pytest.ini: every test carries exactly one.
TIERS = ("unit", "net", "process")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items) -> None:
    """
    Refuse to run when a collected test has no tier marker, or more than
    one, so that no test escapes C{-m unit}, C{-m net} and C{-m process}.

    (First, so that a C{-m} selection cannot deselect the culprits unseen.)
    """
    wrong = []
    for item in items:
        tiers = sorted({mark.name for mark in item.iter_markers() if mark.name in TIERS})
        if len(tiers) != 1:
            wrong.append(f"  {item.nodeid}: {', '.join(tiers) or 'no tier'}")
    if wrong:
        raise pytest.UsageError(
            f"{len(wrong)} tests need exactly one tier marker ({', '.join(TIERS)}; "
            "see tests/README.md):\n" + "\n".join(wrong)
        )


@pytest.fixture
def started():
    """
    Processes (tests/processes.py) a test starts, all killed at its end.
    """
    processes: list = []
    yield processes
    for process in processes:
        process.stop(signal.SIGKILL)


@pytest_twisted.async_yield_fixture
async def running_hub():
    """
    A hub with no workers yet; stopped, with its connections closed, after
    the test.
    """
    running = await start_hub()
    yield running
    await running.stop()


@pytest.fixture(autouse=True)
def no_leftover_timers():
    """
    Fail a test that leaves delayed calls behind in the global reactor:
    a leaked timer is a leaked connection or a missed cancel.
    """
    before = set(reactor.getDelayedCalls())
    yield
    leftover = [
        call for call in reactor.getDelayedCalls() if call not in before and call.active()
    ]
    assert not leftover, f"test left delayed calls behind: {leftover}"
