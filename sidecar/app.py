"""The composition root: the one place that picks implementations and wires them together.

Start-up order is the health contract: keys are loaded and checked, the store answers and the
revocation mirror is loaded, and only then do the listeners bind and report SERVING. SIGTERM
(or SIGINT) flips health to NOT_SERVING, stops accepting calls, gives in-flight calls the
grace period, and closes the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass
from pathlib import Path

from sidecar.clock import Clock, SystemClock
from sidecar.config import Settings
from sidecar.errors import ConfigError, StoreUnavailableError
from sidecar.keys.generate import generate_key, write_key_file
from sidecar.keys.loader import load_key_file
from sidecar.keys.material import KeyMaterial
from sidecar.keys.ring import KeyRing
from sidecar.store.base import TokenStore
from sidecar.store.memory import MemoryTokenStore
from sidecar.store.sqlite import SqliteTokenStore
from sidecar.tokens.service import TokenService
from sidecar.transport.server import Listeners, build_listeners

log = logging.getLogger("authsidecar")


def load_keyring(settings: Settings) -> KeyRing:
    """Keys from the configured files; with none, the development key (made on first run)."""
    keys: list[KeyMaterial] = []
    for entry in settings.keys.files:
        keys.extend(load_key_file(entry.path, kid=entry.kid, alg=entry.alg))
    if not keys:
        if not settings.keys.dev_generate:
            raise ConfigError("setting keys.files: no key files configured")
        keys = _dev_keys(settings.dev_key_path, settings.keys.dev_alg)
    return KeyRing(keys, signing_kid=settings.keys.signing_kid)


def _dev_keys(path: Path, alg: str) -> list[KeyMaterial]:
    if not path.exists():
        _, jwk = generate_key(alg)
        write_key_file(path, jwk)
        log.warning("generated a development signing key at %s: do not use it in production", path)
    return load_key_file(path)


async def open_store(settings: Settings) -> TokenStore:
    if settings.store.backend == "memory":
        return MemoryTokenStore()
    store = SqliteTokenStore(settings.sqlite_path)
    await store.open()
    return store


@dataclass
class App:
    settings: Settings
    service: TokenService
    store: TokenStore
    listeners: Listeners
    _maintenance: asyncio.Task[None] | None = None

    async def stop(self) -> None:
        if self._maintenance is not None:
            self._maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintenance
        await self.listeners.stop(self.settings.listen.grace_period_s)
        await self.store.close()

    async def _maintain(self) -> None:
        """Keep the mirror in step with the store (other processes may share an SQLite
        file) and report the store's reachability through health."""
        interval = self.settings.store.sync_interval_s
        serving = True
        while True:
            await asyncio.sleep(interval)
            try:
                await self.store.ping()
                await self.service.sync_revocations()
                healthy = True
            except StoreUnavailableError:
                healthy = False
            if healthy != serving:
                serving = healthy
                log.warning("token store %s", "reachable again" if healthy else "unreachable")
                await self.listeners.set_health(healthy)


async def start_app(settings: Settings, *, clock: Clock | None = None) -> App:
    ring = load_keyring(settings)
    store = await open_store(settings)
    try:
        service = TokenService(
            ring=ring, store=store, settings=settings.tokens, clock=clock or SystemClock()
        )
        await service.start()
        listeners = build_listeners(
            service,
            settings.listen,
            unix_socket=settings.public_socket,
            admin_socket=settings.admin_socket,
        )
        await listeners.start()
        await listeners.set_health(True)
    except BaseException:
        await store.close()
        raise
    app = App(settings, service, store, listeners)
    app._maintenance = asyncio.create_task(app._maintain())
    return app


def banner(app: App) -> str:
    ring = app.service.ring
    signing = ring.signing_key
    parts = [f"authsidecar serving issuer={app.settings.tokens.issuer}"]
    if app.listeners.unix_socket is not None:
        parts.append(f"unix={app.listeners.unix_socket.resolve()}")
    if app.listeners.tcp_address is not None:
        parts.append(f"tcp={app.listeners.tcp_address}")
    if app.listeners.admin_socket is not None:
        parts.append(f"admin={app.listeners.admin_socket.resolve()}")
    parts.append(f"signing_kid={signing.kid if signing else '-'}")
    parts.append(f"keys={len(ring.keys)} store={app.settings.store.backend}")
    return " ".join(parts)


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then drain."""
    app = await start_app(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(banner(app), flush=True)
    await stop.wait()
    log.info("stopping: draining in-flight calls for up to %ss", settings.listen.grace_period_s)
    await app.stop()
    log.info("stopped")
