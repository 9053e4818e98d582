"""
The public home of POTHEAD 0.4.3's ready-made ``wait_for_slot`` gates,
as apps import them::

    from pothead.gating import wait_for_idle_cpus

They live in L{pothead.worker.gating}, beside the worker that runs them.
"""

from pothead.worker.gating import wait_for_idle_cpus

__all__ = ["wait_for_idle_cpus"]
