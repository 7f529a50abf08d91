"""The listeners: a public server (Unix socket and/or loopback TCP) and an admin server.

Two grpc.aio servers share one token engine (the `AuthParts` the app hands over). The admin
server listens only on a Unix socket inside an owner-only (0700) directory and is the only one
whose servicer serves Issue: the file system, not a password, decides who may mint. Both
serve grpc.health.v1 and reflection.

Every server (the health-only one too) is a LayeredServer sharing one CallGate, so stopping
(`drain`, then `stop`) treats every listener alike and fails no call (transport/drain.py).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from authsidecar.envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from authsidecar.v1 import auth_pb2, auth_pb2_grpc
from sidecar.config import EnvoySettings, ListenSettings, TracingSettings, WatchSettings
from sidecar.errors import ConfigError
from sidecar.transport.drain import CallGate, Endpoint, close_connections, stop_accepting
from sidecar.transport.ext_authz import ExtAuthzServicer
from sidecar.transport.layers import LayeredServer, UnaryLayer
from sidecar.transport.malformed import malformed_log
from sidecar.transport.observing import observing
from sidecar.transport.peer_gone import install as quiet_peer_gone
from sidecar.transport.ratelimit import RateLimitedLog
from sidecar.transport.servicer import AuthParts, AuthServicer
from sidecar.transport.tracing import TracingLayer

if TYPE_CHECKING:
    from sidecar.transport.metrics import Metrics

log = logging.getLogger(__name__)

AUTH_SERVICE = auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name
EXT_AUTHZ_SERVICE = external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"].full_name
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class Listeners:
    """What is listening where, for the start-up banner and for tests."""

    public: grpc.aio.Server
    admin: grpc.aio.Server | None
    health: HealthServicer
    # Serves only grpc.health.v1, for kubelet probes (listen.health_tcp).
    health_only: grpc.aio.Server | None = None
    health_tcp_address: str | None = None
    unix_socket: Path | None = None
    admin_socket: Path | None = None
    tcp_address: str | None = None
    addresses: list[str] = field(default_factory=list)
    # Shared by every server: which calls may start, and which are still running.
    gate: CallGate = field(default_factory=CallGate)
    # Everything bound, admin and health-only included: what `stop` shuts.
    bound: list[str] = field(default_factory=list)

    async def set_health(self, serving: bool) -> None:
        status = SERVING if serving else NOT_SERVING
        for name in ("", AUTH_SERVICE):
            await self.health.set(name, status)

    async def start(self) -> None:
        await self.public.start()
        if self.admin is not None:
            await self.admin.start()
        if self.health_only is not None:
            await self.health_only.start()

    async def drain(self, drain_s: float, interrupted: asyncio.Event | None = None) -> None:
        """Health NOT_SERVING for every service name (and it stays so: later `set` calls
        are ignored), while every call is still served, for `drain_s` seconds or until
        `interrupted` is set."""
        await self.health.enter_graceful_shutdown()
        if drain_s <= 0:
            return
        waiter = interrupted or asyncio.Event()
        try:
            await asyncio.wait_for(waiter.wait(), drain_s)
        except TimeoutError:
            pass

    async def stop(self, grace_s: float) -> None:
        """Stop without failing a call (transport/drain.py): new calls and connections are
        refused with UNAVAILABLE, calls already running get up to `grace_s` seconds, then
        the connections are closed and the servers stopped."""
        await self.health.enter_graceful_shutdown()
        self.gate.refuse()
        endpoints = [Endpoint.parse(address) for address in self.bound]
        stop_accepting(endpoints)
        if not await self.gate.wait_idle(grace_s):
            log.warning(
                "%d call(s) still running after the %ss grace period: cut off",
                self.gate.running,
                grace_s,
            )
        closed = close_connections(endpoints)
        servers = [self.public] + ([self.admin] if self.admin is not None else [])
        servers += [self.health_only] if self.health_only is not None else []
        # With the connections closed nothing is left to wait for; without /proc (nothing
        # closed) grpc's own grace is what remains.
        for server in servers:
            await server.stop(0 if closed else grace_s)
        for path in (self.unix_socket, self.admin_socket):
            if path is not None:
                _unlink_socket(path)


def build_listeners(
    parts: AuthParts,
    listen: ListenSettings,
    *,
    unix_socket: Path | None,
    admin_socket: Path | None,
    envoy: EnvoySettings | None = None,
    metrics: Metrics | None = None,
    tracing: TracingSettings | None = None,
    watch: WatchSettings | None = None,
) -> Listeners:
    """Bind every configured address; a bind failure is a ConfigError naming the address."""
    health = HealthServicer()
    options = [
        ("grpc.max_receive_message_length", listen.max_message_bytes),
        # The transport's own hard cap; the layer's softer one gives the clear reason.
        ("grpc.max_metadata_size", listen.max_metadata_bytes * 2),
        ("grpc.so_reuseport", 0),
    ]
    gate = CallGate()
    malformed = malformed_log()
    quiet_peer_gone()  # a caller that left mid-stream: one line a minute (transport/peer_gone.py)
    # The public and the admin server differ only in who may Issue and in ext_authz.
    server = functools.partial(
        _server,
        parts,
        health,
        listen,
        options,
        gate=gate,
        malformed=malformed,
        metrics=metrics,
        tracing=tracing,
        watch=watch,
    )
    public = server(allow_issue=False, envoy=envoy)
    listeners = Listeners(public=public, admin=None, health=health, gate=gate)
    if unix_socket is not None:
        _prepare_socket_dir(unix_socket.parent, 0o755)
        _clear_stale_socket(unix_socket, "listen.unix_socket")
        _bind(public, f"unix:{unix_socket}", "listen.unix_socket")
        listeners.bound.append(f"unix:{unix_socket}")
        os.chmod(unix_socket, listen.unix_socket_mode)
        listeners.unix_socket = unix_socket
        listeners.addresses.append(f"unix:{unix_socket}")
    if listen.tcp:
        port = _bind(public, listen.tcp, "listen.tcp")
        host = listen.tcp.rpartition(":")[0]
        listeners.tcp_address = f"{host}:{port}"
        listeners.bound.append(listeners.tcp_address)
        listeners.addresses.append(listeners.tcp_address)
    if not listeners.addresses:
        raise ConfigError("setting listen: neither unix_socket nor tcp is configured")
    if admin_socket is not None:
        admin = server(allow_issue=True)
        _prepare_socket_dir(admin_socket.parent, 0o700)
        _clear_stale_socket(admin_socket, "listen.admin_socket")
        _bind(admin, f"unix:{admin_socket}", "listen.admin_socket")
        listeners.bound.append(f"unix:{admin_socket}")
        os.chmod(admin_socket, 0o600)
        listeners.admin = admin
        listeners.admin_socket = admin_socket
    if listen.health_tcp:
        health_only = LayeredServer(
            grpc.aio.server(options=options),
            max_metadata_bytes=listen.max_metadata_bytes,
            gate=gate,
            malformed=malformed,
        )
        health_pb2_grpc.add_HealthServicer_to_server(health, health_only)
        port = _bind(health_only, listen.health_tcp, "listen.health_tcp")
        listeners.health_only = health_only
        listeners.health_tcp_address = f"{listen.health_tcp.rpartition(':')[0]}:{port}"
        listeners.bound.append(listeners.health_tcp_address)
    return listeners


def _server(
    parts: AuthParts,
    health: HealthServicer,
    listen: ListenSettings,
    options: list[tuple[str, int]],
    *,
    gate: CallGate,
    malformed: RateLimitedLog,
    allow_issue: bool,
    metrics: Metrics | None = None,
    envoy: EnvoySettings | None = None,
    tracing: TracingSettings | None = None,
    watch: WatchSettings | None = None,
) -> grpc.aio.Server:
    # Observing outermost: it sees (and counts) the metadata limit's refusals too. Tracing
    # inside it (its CallInfo carries the reason); the limit is innermost (layers.py).
    layers: list[UnaryLayer] = [observing(metrics)]
    if tracing is not None and tracing.enabled:
        layers.append(TracingLayer())
    server = LayeredServer(
        grpc.aio.server(options=options),
        max_metadata_bytes=listen.max_metadata_bytes,
        unary_layers=layers,
        gate=gate,
        malformed=malformed,
    )
    auth_pb2_grpc.add_AuthServiceServicer_to_server(
        AuthServicer(parts, allow_issue=allow_issue, watch=watch, gate=gate, message_layers=layers),
        server,
    )
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    services = [AUTH_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME]
    if envoy is not None and envoy.enabled:
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(
            ExtAuthzServicer(parts.flows, envoy), server
        )
        services.append(EXT_AUTHZ_SERVICE)
    reflection.enable_server_reflection(services, server)
    return server


def _bind(server: grpc.aio.Server, address: str, setting: str) -> int:
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise ConfigError(f"setting {setting}: cannot listen on {address!r}: {exc}") from None
    if port == 0 and not address.startswith("unix:"):
        raise ConfigError(f"setting {setting}: cannot listen on {address!r}")
    return port


def _prepare_socket_dir(directory: Path, mode: int) -> None:
    """Create the socket's directory; an admin directory must be ours and private."""
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=mode)
        info = directory.stat()
        if mode == 0o700:
            if info.st_uid != os.getuid():
                raise ConfigError(f"admin socket directory {str(directory)!r} is not owned by us")
            os.chmod(directory, 0o700)
    except OSError as exc:
        raise ConfigError(
            f"cannot prepare socket directory {str(directory)!r}: {exc.strerror}"
        ) from None


def _clear_stale_socket(path: Path, setting: str) -> None:
    """A socket file left by a killed sidecar is removed; a live one stops start-up."""
    try:
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise ConfigError(f"setting {setting}: {str(path)!r} exists and is not a socket")
    except FileNotFoundError:
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError:
        path.unlink(missing_ok=True)
        return
    finally:
        probe.close()
    raise ConfigError(f"setting {setting}: another process is listening on {str(path)!r}")


def _unlink_socket(path: Path) -> None:
    try:
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()
    except FileNotFoundError:
        pass
