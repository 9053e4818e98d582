"""
``python3 -m pothead.server``: POTHEAD 0.4.3's hub command line, running
``twistd pothead-hub`` (see pothead.compat).
"""

if __name__ == "__main__":
    from pothead.compat import server_main

    server_main()
