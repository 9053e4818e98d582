"""
A demo WSGI app with a visible bit of CPU work per request: it renders the
Mandelbrot set as text.

    twistd -n pothead-worker --app pothead.demo:app

``GET /?width=W&height=H&iterations=N`` picks the size and the work; the
response says which process rendered it and how long that took.
"""

from __future__ import annotations

import os
import time
from urllib.parse import parse_qs

_SHADES = " .:-=+*#%@"


def mandelbrot(width: int, height: int, iterations: int) -> str:
    """
    The Mandelbrot set as C{height} lines of C{width} characters.
    """
    rows = []
    for y in range(height):
        ci = (y / height) * 2.4 - 1.2
        row = []
        for x in range(width):
            cr = (x / width) * 3.3 - 2.3
            zr = zi = 0.0
            n = 0
            while n < iterations and zr * zr + zi * zi <= 4.0:
                zr, zi = zr * zr - zi * zi + cr, 2 * zr * zi + ci
                n += 1
            row.append(_SHADES[(len(_SHADES) - 1) * n // iterations])
        rows.append("".join(row))
    return "\n".join(rows)


def _bounded(query: dict, name: str, default: int, most: int) -> int:
    try:
        return max(1, min(most, int(query[name][0])))
    except (KeyError, ValueError):
        return default


def app(environ, start_response):
    """
    Render the picture the query asks for, and say who rendered it.
    """
    query = parse_qs(environ.get("QUERY_STRING", ""))
    width = _bounded(query, "width", 72, 400)
    height = _bounded(query, "height", 24, 200)
    iterations = _bounded(query, "iterations", 200, 5000)
    started = time.perf_counter()
    picture = mandelbrot(width, height, iterations)
    took = time.perf_counter() - started
    body = (
        f"{picture}\nrendered by pid {os.getpid()} in {took * 1000:.1f} ms\n"
    ).encode("utf-8")
    start_response(
        "200 OK",
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
    )
    return [body]
