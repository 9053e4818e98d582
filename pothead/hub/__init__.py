"""
The hub (``twistd pothead-hub``): consumers queue here as jobs, workers
attach here as slots, and each job is handed to the next idle slot.

Consumer side: L{consumer}, L{job}, L{access_log}; queues: L{pool};
worker side: L{attach_server}, L{slot}; the process: L{service},
L{tap}, L{limits}, L{descriptors}, L{listening}, L{connection_limit}.
"""
