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

    Relies on the reactor's private ``_exitSignal``: the reactor's
    signal handlers set it, and twistd's runner copies it after the
    reactor stops (C{twisted.application.app.ApplicationRunner.startReactor})
    and re-raises it (C{twisted.scripts.twistd.runApp}); on a reactor
    without it this does nothing.  Twisted has no public way to make a
    stop that a signal started exit 0, and replacing its signal handlers
    would mean re-raising the signal ourselves when a drain is cut short,
    as twistd does.  tests/test_twisted_private.py pins each step,
    and a real twistd's exit status.
    """
    if getattr(reactor, "_exitSignal", None) is not None:
        reactor._exitSignal = None
