"""
The hub's descriptor budget: what it needs, the soft limit it raises, and
the connection limits it lowers when the hard limit is too low.
"""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest

from pothead.hub.descriptors import ATTACH_MARGIN, FIXED, PER_CONSUMER, needed, plan


@pytest.mark.unit
def test_need_counts_every_connection():
    """Two descriptors per consumer connection, one per slot, one per listener, and the fixed ones."""
    assert needed(1000, 100, 3) == FIXED + 3 + PER_CONSUMER * 1000 + 100 + ATTACH_MARGIN


@pytest.mark.unit
def test_soft_limit_raised_to_the_need():
    """Below the hard limit, the soft limit goes up to the need, and the limits stay."""
    budget = plan(2280, 1024, 2, soft=1024, hard=1 << 20)
    assert (budget.max_connections, budget.max_slots) == (2280, 1024)
    assert budget.soft == needed(2280, 1024, 2) and not budget.short


@pytest.mark.unit
def test_soft_limit_never_lowered():
    """A soft limit already above the need is kept."""
    budget = plan(10, 10, 2, soft=50000, hard=50000)
    assert budget.soft == 50000 and not budget.short


@pytest.mark.unit
def test_unlimited_hard_limit():
    """An unlimited hard limit lets the soft one go to the need."""
    budget = plan(2000, 10, 1, soft=1024, hard=resource.RLIM_INFINITY)
    assert budget.soft == needed(2000, 10, 1) and not budget.short


@pytest.mark.unit
@pytest.mark.parametrize("hard", [1024, 2000, 4096])
def test_limits_cut_to_fit_a_low_hard_limit(hard):
    """
    Under a hard limit too low for the configuration, both limits shrink
    in the same proportion until what they need fits under it.
    """
    budget = plan(2280, 1024, 2, soft=1024, hard=hard)
    assert budget.short and budget.soft == hard
    assert needed(budget.max_connections, budget.max_slots, 2) <= hard
    assert needed(budget.max_connections + 2, budget.max_slots + 1, 2) > hard
    assert budget.max_connections / 2280 == pytest.approx(budget.max_slots / 1024, rel=0.02)


@pytest.mark.unit
def test_at_least_one_of_each():
    """A hard limit below even the fixed need still leaves one connection of each kind."""
    budget = plan(100, 10, 2, soft=32, hard=32)
    assert (budget.max_connections, budget.max_slots) == (1, 1)


def run_budget(nofile: tuple[int, int]) -> str:
    """Take the budget in a fresh process started with C{nofile}; what it logged and its limits."""
    program = (
        "import resource, sys\n"
        "from twisted.logger import globalLogBeginner, textFileLogObserver\n"
        "globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])\n"
        "from pothead.hub.descriptors import take_budget\n"
        "budget = take_budget(2280, 1024, 2)\n"
        "print('limits', *resource.getrlimit(resource.RLIMIT_NOFILE),"
        " budget.max_connections, budget.max_slots)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=30,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, nofile), check=True,
    ).stdout


@pytest.mark.process
def test_process_soft_limit_raised():
    """A process started with soft 1024 runs with the soft limit it needs, and says so in one line."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 8192:
        pytest.skip(f"hard descriptor limit {hard} too low to start a process with 8192")
    out = run_budget((1024, 8192))
    need = needed(2280, 1024, 2)
    assert f"limits {need} 8192 2280 1024" in out, out
    assert f"{need} needed; limit {need} (was 1024, hard 8192)" in out, out
    assert "Raise the limit" not in out


@pytest.mark.process
def test_process_short_of_descriptors_says_so():
    """Under a hard limit of 1024 the limits shrink, and one line says what to raise and how."""
    out = run_budget((1024, 1024))
    budget = plan(2280, 1024, 2, 1024, 1024)
    assert f"limits 1024 1024 {budget.max_connections} {budget.max_slots}" in out, out
    assert f"need {needed(2280, 1024, 2)} descriptors but the hard limit is 1024" in out, out
    assert "LimitNOFILE=" in out and "ulimit -n" in out
