"""
Small WSGI apps the fidelity tests serve both through the hub and directly.
"""
