"""
Addresses as people and Host headers write them.
"""

from __future__ import annotations


def host_port(address: object, unix: str | None = None) -> str:
    """
    C{host:port}, with an IPv6 host in brackets.

    :param address: a Twisted address (IPv4Address, IPv6Address,
        UNIXAddress, ...).
    :param unix: what to say for an address without a host (a UNIX
        socket); by default its path, or C{"unix"}.
    """
    host = getattr(address, "host", None)
    if host is None:
        if unix is not None:
            return unix
        name = getattr(address, "name", None)
        return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name or "unix")
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{address.port}"
