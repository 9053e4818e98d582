"""
twistd plugins for pothead.

This file holds only ServiceMakers: importing anything that touches the
reactor here would break ``twistd --reactor`` whenever dropin.cache is stale.
"""

from twisted.application.service import ServiceMaker

pothead_hub = ServiceMaker(
    "pothead hub",
    "pothead.hub.tap",
    "Queue consumer HTTP requests and hand each to the next idle worker slot.",
    "pothead-hub",
)

pothead_worker = ServiceMaker(
    "pothead worker",
    "pothead.worker.tap",
    "Attach to a pothead hub and serve a WSGI application over those connections.",
    "pothead-worker",
)
