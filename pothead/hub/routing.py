"""
Which pool a consumer request goes to: by its ``Host`` and the longest
prefix of its path, as a virtual host and its locations would route it.

A hub serving several services has a pool per service (C{--pool}), each
with its own FIFO line, slots and limits, so that a burst of long jobs in
one never delays another's.  This module holds the pools' definitions as
the command line gives them (L{PoolSpec}, L{parse_pool}) and the table
that picks one for a request (L{Router}).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

#: A pool's name: what workers ask for in their attach path, and what
#: metrics and logs call it.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")

#: A host a pool serves: a name or IPv4 address (or ``*.`` and a suffix),
#: no port.  (An IPv6 literal cannot be written: ``:`` separates options.)
_HOST = re.compile(r"(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*\.?\Z")

#: The limits a pool may set for itself, by option name: each is the hub's
#: unless set (L{pothead.hub.limits.Limits} field, and its type).
POOL_LIMITS = {
    "max-queue": ("max_queue", int),
    "queue-timeout": ("queue_timeout", float),
    "request-timeout": ("request_timeout", float),
}


class PoolSpecError(ValueError):
    """A pool definition that cannot be used; the message says why."""


@dataclass(frozen=True)
class PoolSpec:
    """
    One pool as defined on the command line.

    :ivar name: its name.
    :ivar hosts: the hosts it serves (exact names, or C{*.suffix}), lower
        case; empty for every host.
    :ivar prefix: the path prefix it serves (C{/} for every path).
    :ivar strip: whether the prefix is taken off the path the worker sees.
    :ivar limits: the limits it sets itself, as L{Limits} fields.
    """

    name: str
    hosts: tuple[str, ...] = ()
    prefix: str = "/"
    strip: bool = False
    limits: dict = field(default_factory=dict, compare=False, hash=False)

    def worker_target(self, target: bytes) -> bytes | None:
        """
        The request target its worker is sent for C{target}, if not that:
        without the prefix, when the pool strips it and C{target} is under
        it (a request that reached the pool named default because no pool
        matched it is sent as it came).
        """
        if not self.strip or not _under(_path(target), self.prefix):
            return None
        rest = target[len(self.prefix.encode("latin-1")):]
        return rest if rest.startswith(b"/") else b"/" + rest


def parse_pool(text: str) -> PoolSpec:
    """
    A pool from C{NAME[:host=H1,H2][:prefix=/p][:strip][:max-queue=N]
    [:queue-timeout=S][:request-timeout=S]}.
    """
    name, *options = text.strip().split(":")
    if not _NAME.match(name):
        raise PoolSpecError(
            f"pool name {name!r}: letters, digits, '.', '_' and '-', starting with a letter "
            "or digit, at most 63")
    hosts: tuple[str, ...] = ()
    prefix = "/"
    strip = False
    limits: dict = {}
    seen = set()
    for option in options:
        key, equals, value = option.partition("=")
        if key in seen:
            raise PoolSpecError(f"pool {name}: {key} given twice")
        seen.add(key)
        if key == "strip" and not equals:
            strip = True
        elif key == "host" and value:
            hosts = tuple(_host(name, host) for host in value.split(","))
        elif key == "prefix" and value:
            prefix = _prefix(name, value)
        elif key in POOL_LIMITS and value:
            limits[POOL_LIMITS[key][0]] = _positive(name, key, value, POOL_LIMITS[key][1])
        else:
            known = ", ".join(["host=", "prefix=", "strip", *(f"{k}=" for k in POOL_LIMITS)])
            raise PoolSpecError(f"pool {name}: {option!r} is not one of {known}")
    if strip and prefix == "/":
        raise PoolSpecError(f"pool {name}: strip needs a prefix= to take off")
    return PoolSpec(name, hosts, prefix, strip, limits)


def parse_pools_file(path: str) -> list[PoolSpec]:
    """
    The pools of C{path}: one definition per line, as C{--pool} takes it;
    blank lines and lines starting with C{#} are skipped.
    """
    try:
        with open(path, encoding="utf-8") as lines:
            numbered = list(enumerate(lines, 1))
    except OSError as error:
        raise PoolSpecError(f"--pools {path}: {error.strerror}") from None
    specs = []
    for number, line in numbered:
        if line.strip() and not line.lstrip().startswith("#"):
            try:
                specs.append(parse_pool(line))
            except PoolSpecError as error:
                raise PoolSpecError(f"{path}, line {number}: {error}") from None
    return specs


def _host(pool: str, host: str) -> str:
    host = host.strip().lower()
    if not _HOST.match(host):
        raise PoolSpecError(f"pool {pool}: host {host!r} is not a host name or *.suffix")
    return host.rstrip(".")


def _prefix(pool: str, prefix: str) -> str:
    if not prefix.startswith("/") or any(c in prefix for c in "?# ") or "//" in prefix:
        raise PoolSpecError(f"pool {pool}: prefix {prefix!r} must be a path starting with /")
    return prefix.rstrip("/") or "/"


def _positive(pool: str, key: str, value: str, kind: type) -> float:
    try:
        number = kind(value)
    except ValueError:
        raise PoolSpecError(f"pool {pool}: {key}={value!r} is not a number") from None
    if not number > 0:
        raise PoolSpecError(f"pool {pool}: {key} must be above 0, not {value}")
    return number


def check_pools(specs: list[PoolSpec]) -> None:
    """
    Refuse a set of pools two of which have the same name, or serve the
    same hosts and prefix (a request could not be told which).
    """
    names = set()
    routes = {}
    for spec in specs:
        if spec.name in names:
            raise PoolSpecError(f"pool {spec.name} defined twice")
        names.add(spec.name)
        for host in spec.hosts or ("*",):
            other = routes.setdefault((host, spec.prefix), spec.name)
            if other != spec.name:
                raise PoolSpecError(
                    f"pools {other} and {spec.name} both serve host {host} "
                    f"and prefix {spec.prefix}")


#: How well a pool's host matched: an exact name, a wildcard, or any host.
_EXACT, _WILDCARD, _ANY = 3, 2, 1


class Router:
    """
    Pick a request's pool: among the pools whose hosts match its ``Host``
    (a pool with no hosts matches every host), the one with the longest
    prefix of its path (whole segments: C{/api} serves C{/api} and
    C{/api/x}, not C{/apix}); of two as long, the one whose host matched
    more closely (the name itself, then the longest C{*.suffix}, then any
    host).  A request no pool matches goes to C{default} if there is one.
    """

    def __init__(self, specs: list[PoolSpec], default: str | None) -> None:
        self._specs = specs
        self._default = default
        # One pool for every host and path (the hub without --pool): no
        # request needs looking at.
        only = specs[0] if len(specs) == 1 else None
        self._everything = only if only and not only.hosts and only.prefix == "/" else None

    def route(self, host: bytes | None, target: bytes) -> PoolSpec | None:
        """
        The pool for a request to C{host} (its ``Host`` value, port and all)
        and C{target} (origin form), or L{None}: no pool serves it.
        """
        if self._everything is not None:
            return self._everything
        name = _host_name(host)
        path = _path(target)
        best = None
        best_rank: tuple = ()
        for spec in self._specs:
            closeness = _host_match(spec.hosts, name)
            if closeness is None or not _under(path, spec.prefix):
                continue
            rank = (len(spec.prefix) if spec.prefix != "/" else 0, closeness)
            if rank > best_rank:
                best, best_rank = spec, rank
        if best is None and self._default is not None:
            return next(spec for spec in self._specs if spec.name == self._default)
        return best


def _host_name(host: bytes | None) -> str:
    """A ``Host`` value's name: lower case, without port or trailing dot."""
    if not host:
        return ""
    text = host.decode("latin-1").strip().lower()
    if text.startswith("["):
        return text[: text.find("]") + 1]
    return text.rsplit(":", 1)[0].rstrip(".") if ":" in text else text.rstrip(".")


def _host_match(hosts: tuple[str, ...], name: str) -> tuple[int, int] | None:
    """How closely C{name} matches C{hosts}, comparable; L{None}: not at all."""
    if not hosts:
        return (_ANY, 0)
    best = None
    for host in hosts:
        if host == name:
            return (_EXACT, 0)
        if host.startswith("*.") and name.endswith(host[1:]) and len(name) > len(host) - 1:
            best = max(best or (0, 0), (_WILDCARD, len(host)))
    return best


def _path(target: bytes) -> str:
    """The path of an origin-form target, as sent (not percent-decoded)."""
    return target.split(b"?", 1)[0].decode("latin-1")


def _under(path: str, prefix: str) -> bool:
    if prefix == "/":
        return True
    return path == prefix or path.startswith(prefix + "/")
