"""
The worker (``twistd pothead-worker``): connects out to a hub, attaches
slots, and serves each slot's requests with a WSGI app.

Attaching: L{attach_client}, L{admission}, L{cgroup}, L{gating}; serving:
L{slot_server}, L{flow}, L{body_pipe}, L{threads}, L{environ}; the
process: L{service}, L{tap}.  ``python3 -m pothead.worker`` is POTHEAD
0.4.3's command line (L{__main__}).
"""
