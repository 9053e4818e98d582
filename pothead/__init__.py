"""
pothead: a reverse-HTTP load balancer for expensive, non-concurrent requests.

A hub queues consumer requests; workers connect out to it, attach, and serve
HTTP on the connections they opened.  See docs/architecture.md.
"""

__version__ = "0.1.0"
