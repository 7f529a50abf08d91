"""Before anything is made: refuse a fixed TCP port another process already listens on."""

from __future__ import annotations

import errno
import socket

from sidecar.addresses import parse_host_port
from sidecar.config import Settings
from sidecar.errors import ConfigError


def check_addresses_free(settings: Settings) -> None:
    """Refuse, in one line saying "in use", a fixed TCP port another process listens on.

    Runs first in start_app (issue 14): before a dev key is generated or a store opened, and
    before grpc tries the bind, whose C core would log a line of its own ahead of ours. A
    plain bind with SO_REUSEADDR and without SO_REUSEPORT, as grpc binds: it fails exactly
    when a socket listens there (TIME_WAIT leftovers do not count). Port 0 is never in use.
    The listeners' own bind still reports what this cannot foresee (a race, a bad host).
    """
    for setting, address in (
        ("listen.tcp", settings.listen.tcp),
        ("listen.health_tcp", settings.listen.health_tcp),
        ("metrics.listen", settings.metrics.listen),
        ("http.listen", settings.http.listen),
    ):
        if not address:
            continue
        host, port = parse_host_port(address)
        if port == 0:
            continue
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:
            continue  # an unresolvable host: the listener's bind names it
        family, kind, proto, _, sockaddr = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(sockaddr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise ConfigError(
                        f"setting {setting}: {address} is already in use by another process "
                        "(another sidecar?); stop it or choose another port"
                    ) from None
                raise ConfigError(
                    f"setting {setting}: cannot listen on {address!r}: {exc.strerror}"
                ) from None
