"""
The hub's file-descriptor budget: how many it needs for the connections
it promises to hold, and the soft limit raised to match.

Every consumer connection costs the hub a descriptor, and another for a
request body too large to keep in memory (spooled to a file); every
worker connection one.  Services usually start with a soft limit of 1024
and a hard limit far above it: a hub that never looked would run out at
about a thousand consumers, and answer the rest with resets.  So the hub
works out its need at start, raises its soft limit as far as the hard one
allows (as HAProxy does from ``maxconn``), and where the hard limit is
too low lowers its own connection limits to fit, and says so.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

from twisted.logger import Logger

_log = Logger()

#: Descriptors that are not connections: standard streams, log files, the
#: reactor's poller and wakers, the reserve kept for answering at the
#: limit, libraries' own.
FIXED = 64

#: Per consumer connection: its socket, and a spooled request body.
PER_CONSUMER = 2

#: Worker-port connections beyond the slots the hub holds: attaches that
#: are read, then refused with 503 because the hub holds enough slots.
ATTACH_MARGIN = 16


@dataclass(frozen=True)
class Budget:
    """
    The connection limits the hub enforces, and the descriptors behind
    them.

    :ivar max_connections: consumer connections open at once.
    :ivar max_slots: worker slots held at once.
    :ivar needed: descriptors the configured limits need.
    :ivar soft: the soft limit to run with.
    :ivar hard: the hard limit.
    """

    max_connections: int
    max_slots: int
    needed: int
    soft: int
    hard: int

    @property
    def short(self) -> bool:
        """Whether the hard limit forced lower connection limits."""
        return self.needed > self.soft


def needed(max_connections: int, max_slots: int, listeners: int) -> int:
    """
    Descriptors for C{max_connections} consumers, C{max_slots} slots and
    C{listeners} listening ports.
    """
    return FIXED + listeners + PER_CONSUMER * max_connections + max_slots + ATTACH_MARGIN


def plan(max_connections: int, max_slots: int, listeners: int, soft: int, hard: int) -> Budget:
    """
    The budget for the configured limits under the current soft and hard
    descriptor limits: the soft one raised as far as the need (never
    lowered), or, when even the hard one is too low, both connection
    limits cut in the same proportion to fit under it.
    """
    need = needed(max_connections, max_slots, listeners)
    if hard == resource.RLIM_INFINITY or need <= hard:
        return Budget(max_connections, max_slots, need, max(soft, need), hard)
    room = hard - needed(0, 0, listeners)
    share = max(room, 0) / (PER_CONSUMER * max_connections + max_slots)
    slots = max(1, int(max_slots * share))
    connections = max(1, (room - slots) // PER_CONSUMER)
    return Budget(connections, slots, need, hard, hard)


def take_budget(max_connections: int, max_slots: int, listeners: int) -> Budget:
    """
    Plan the budget for this process, raise its soft descriptor limit to
    it, and log the numbers: one line, and one more when the hard limit is
    too low for the configuration.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    budget = plan(max_connections, max_slots, listeners, soft, hard)
    if budget.soft != soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (budget.soft, hard))
    _log.info(
        "descriptors: {connections} consumer connections, {slots} worker slots, "
        "{listeners} listeners: {budget} needed; limit {soft} (was {was}, hard {hard})",
        connections=budget.max_connections, slots=budget.max_slots, listeners=listeners,
        budget=needed(budget.max_connections, budget.max_slots, listeners),
        soft=budget.soft, was=soft, hard=_limit(hard),
    )
    if budget.short:
        _log.warn(
            "descriptors: --max-connections {asked} and --max-slots {asked_slots} need "
            "{need} descriptors but the hard limit is {hard}; holding {connections} consumer "
            "connections and {slots} slots instead. Raise the limit (LimitNOFILE= in the "
            "systemd unit, ulimit -n before starting) to hold them all",
            asked=max_connections, asked_slots=max_slots, need=budget.needed, hard=_limit(hard),
            connections=budget.max_connections, slots=budget.max_slots,
        )
    return budget


def _limit(value: int) -> str:
    return "unlimited" if value == resource.RLIM_INFINITY else str(value)
