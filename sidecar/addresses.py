"""`host:port` addresses: parsed once, the same way, by config validation and by every
listener or client that binds or dials one (the Redis Sentinel nodes included)."""

from __future__ import annotations

import ipaddress


def parse_host_port(value: str) -> tuple[str, int]:
    """`("127.0.0.1", 50051)` from "127.0.0.1:50051"; brackets of an IPv6 host removed.
    Raises ValueError naming the value (config turns it into `setting x: ...`)."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"{value!r} is not host:port")
    if host.startswith("[") or host.endswith("]"):
        # "[::1" once lost a bracket here and became host ":" (then "is not loopback").
        if not (host.startswith("[") and host.endswith("]")):
            raise ValueError(f"{value!r} is not host:port (unbalanced brackets)")
        host = host[1:-1]
    if not host or "[" in host or "]" in host:
        raise ValueError(f"{value!r} is not host:port")
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    """True for "localhost" and loopback IP literals; a name is never resolved here, so a
    host name other than "localhost" counts as off loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
