"""
Make a WSGI app behind the hub see the consumer's request, not the hub's.

The worker only ever talks to the hub it attached to, with its token, so
it trusts the hub's forwarding headers the way an app behind one trusted
reverse proxy does (compare Werkzeug's ``ProxyFix`` with one hop): the
client address is the last ``X-Forwarded-For`` entry, the scheme is
``X-Forwarded-Proto``, and the server name and port come from the
consumer's ``Host``.  Without this, ``SERVER_PORT`` would be the worker's
own ephemeral port and every URL the app built from it would be wrong.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

WSGIApp = Callable[[dict, Callable[..., Any]], Iterable[bytes]]

_DEFAULT_PORTS = {"http": "80", "https": "443"}


def behind_hub(app: WSGIApp) -> WSGIApp:
    """
    Wrap C{app} so its environ describes the consumer's request.
    """

    def forwarded(environ: dict, start_response: Callable[..., Any]) -> Iterable[bytes]:
        forwarded_for = environ.get("HTTP_X_FORWARDED_FOR")
        if forwarded_for:
            environ["REMOTE_ADDR"] = forwarded_for.rsplit(",", 1)[-1].strip()
        scheme = environ.get("HTTP_X_FORWARDED_PROTO")
        if scheme in _DEFAULT_PORTS:
            environ["wsgi.url_scheme"] = scheme
        host = environ.get("HTTP_HOST")
        if host:
            name, port = _split_host(host)
            environ["SERVER_NAME"] = name
            environ["SERVER_PORT"] = port or _DEFAULT_PORTS[environ["wsgi.url_scheme"]]
        return app(environ, start_response)

    return forwarded


def _split_host(host: str) -> tuple[str, str]:
    """
    Split a Host header into name and port, IPv6 literals included.
    """
    if host.startswith("["):
        name, _, rest = host.partition("]")
        return name + "]", rest[1:] if rest.startswith(":") else ""
    name, _, port = host.partition(":")
    return name, port if port.isdigit() else ""
