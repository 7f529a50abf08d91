"""A started sidecar: what it holds, its background tasks, and how it stops.

Stopping (docs/operations.md "Stopping"): SIGTERM (or SIGINT) flips health to NOT_SERVING and
keeps serving for `listen.drain_s` (a second signal cuts that short); then new calls are
answered UNAVAILABLE / SHUTTING_DOWN, in-flight calls get the grace period, the connections
are closed, and the store is closed. No call ends CANCELLED (transport/drain.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sidecar.app.store import StoreFollower
from sidecar.config import Settings
from sidecar.keys.remote import RemoteKeySet
from sidecar.keys.watch import KeyWatcher
from sidecar.store.base import TokenStore
from sidecar.tokens.service import TokenService
from sidecar.tokens.signing import Signer
from sidecar.transport.jwks_http import JwksHttpServer
from sidecar.transport.server import Listeners

if TYPE_CHECKING:
    from sidecar.transport.metrics import Metrics, MetricsHttpServer


@dataclass
class App:
    settings: Settings
    service: TokenService
    store: TokenStore
    listeners: Listeners
    # Prometheus metrics (issue 6): None when metrics.listen is "".
    metrics: Metrics | None = None
    metrics_server: MetricsHttpServer | None = None
    # Key reload (issue 5, docs/keys.md) and the JWKS over HTTP (None when http.listen is "").
    key_watcher: KeyWatcher | None = None
    jwks_http: JwksHttpServer | None = None
    # External issuers' key sets (config `issuers`, docs/keys.md), refreshed in the background.
    remote_keys: list[RemoteKeySet] = field(default_factory=list)
    # The signing threads (tokens.signing_threads), closed once the listeners have drained.
    signer: Signer | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._store_follower = StoreFollower(
            settings=self.settings,
            store=self.store,
            service=self.service,
            listeners=self.listeners,
            metrics=self.metrics,
        )

    def reload_keys(self) -> None:
        """SIGHUP: re-read the key set now."""
        if self.key_watcher is not None:
            self.key_watcher.request_reload()

    @property
    def store_reachable(self) -> bool:
        return self._store_follower.reachable

    async def drain(self, interrupted: asyncio.Event | None = None) -> None:
        """Health NOT_SERVING, every call still served, for `listen.drain_s` seconds or until
        `interrupted` is set; the background tasks (revocation feed, key reload) keep running."""
        await self.listeners.drain(self.settings.listen.drain_s, interrupted)

    async def stop(self) -> None:
        """Stop now without failing a call: refuse new ones (UNAVAILABLE), let the running
        ones finish within `listen.grace_period_s`, then release everything. The listeners go
        first: a call still running may need the revocation feed, the store and the issuers'
        key sets, which stop only after it."""
        # Watch streams never end by themselves: end them first, so the stop is not spent
        # waiting on them (they end UNAVAILABLE / SHUTTING_DOWN; subscribers resubscribe).
        self.service.events.close()
        await self.listeners.stop(self.settings.listen.grace_period_s)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for remote in self.remote_keys:
            await remote.close()
        if self.signer is not None:
            self.signer.close()
        if self.metrics_server is not None:
            self.metrics_server.close()
        if self.jwks_http is not None:
            await self.jwks_http.close()
        await self.service.store_sync.save_snapshot()  # the next start reads it (issue 16)
        await self.store.close()

    def start_background(self) -> None:
        self._tasks.append(asyncio.create_task(self._store_follower.poll()))
        self._tasks.append(asyncio.create_task(self._store_follower.follow()))
        if self.key_watcher is not None:
            self._tasks.append(asyncio.create_task(self.key_watcher.run()))
        for remote in self.remote_keys:
            self._tasks.append(asyncio.create_task(remote.run()))
