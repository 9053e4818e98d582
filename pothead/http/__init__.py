"""
HTTP/1.1 as both of pothead's programs speak it: llhttp's parsers with
pothead's policy on top, the server channel and response writer, the
hub's client side, header rules and socket tuning.

Nothing here knows about hubs, workers, jobs or slots.
"""
