"""
A clean stop exits 0.

twistd ends a process stopped by SIGTERM by re-raising the signal, so its
exit status says "killed".  pothead drains before it stops, and a drain that
finished has lost nothing: that stop is a success, and the exit status says
so (0), while a drain cut short by its timeout keeps twistd's signal status.
"""

from __future__ import annotations


def exit_cleanly(reactor: object) -> None:
    """
    Make twistd exit 0 after this stop, even though a signal started it.

    Relies on the reactor's ``_exitSignal``, which twistd reads after the
    reactor stops (twisted.scripts.twistd.run); on a reactor without it
    this does nothing.
    """
    if getattr(reactor, "_exitSignal", None) is not None:
        reactor._exitSignal = None
