"""
``python3 -m pothead.worker``: POTHEAD 0.4.3's worker command line,
running ``twistd pothead-worker`` (see pothead.compat).
"""

from pothead.compat import worker_main

worker_main()
