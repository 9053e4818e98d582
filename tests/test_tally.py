"""
Floods of one event, logged as counts at most once per interval.
"""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from pothead.hub.tally import Tally

pytestmark = pytest.mark.unit


def test_first_event_at_once_then_a_count_per_interval():
    """
    The first event is logged at once; those within the next second
    become one line when it ends; a quiet second after that, the next is
    logged at once again.
    """
    clock = Clock()
    lines: list[str] = []

    def observe(event):
        if event.get("log_level") is LogLevel.warn and "refused" in event.get("log_format", ""):
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        tally = Tally(clock, "refused {count} ({detail})")
        tally.count("a")
        assert lines == ["refused 1 (a)"]
        for detail in "bcd":
            tally.count(detail)
        assert len(lines) == 1
        clock.advance(1.0)
        assert lines[-1] == "refused 3 (d)"
        clock.advance(1.0)
        assert len(lines) == 2 and not clock.getDelayedCalls()
        tally.count("e")
        assert lines[-1] == "refused 1 (e)" and tally.total == 5
        clock.advance(1.0)
    finally:
        globalLogPublisher.removeObserver(observe)
    assert len(lines) == 3 and not clock.getDelayedCalls()
