"""The token store as the running sidecar sees it: which one is opened, and how its
reachability is followed and reported.

Reachability (issue 3, docs/lifecycle.md) is reported on the health service name
`authsidecar.v1.AuthService/store`. While the store is unreachable the mirror is marked stale;
with `store.on_unavailable: degrade` (default) "" and `authsidecar.v1.AuthService` stay SERVING
(Verify answers from signatures plus the last known revocations), with `refuse` they go
NOT_SERVING too and Verify fails UNAVAILABLE. Reachability is regained only after the mirror
was reloaded in full, so no revocation written meanwhile is missed.

Durability (issue 13): every poll re-reads how the store persists and every reconciliation
writes back revocations a lost store forgot (tokens/store_sync.py).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from sidecar.clock import Clock
from sidecar.config import Settings
from sidecar.errors import ConfigError, StoreUnavailableError
from sidecar.store.base import TokenStore
from sidecar.tokens.service import TokenService
from sidecar.transport.server import AUTH_SERVICE, NOT_SERVING, SERVING, Listeners

if TYPE_CHECKING:
    from sidecar.transport.metrics import Metrics

log = logging.getLogger("authsidecar")
STORE_HEALTH_SERVICE = f"{AUTH_SERVICE}/store"
# Reconnecting the revocation feed: first retry soon, then at most once a second.
_FEED_RETRY_S = (0.05, 1.0)


def _stop_if_cancelled() -> None:
    """Raise the cancellation this task was asked for, if a store call swallowed it.

    Python 3.11's `asyncio.wait_for` (redis-py waits on its socket with it) can lose a cancel
    that lands as the awaited command completes (store/redis_feed.py meets the same): the
    task is still marked as cancelling, but runs on. The follower then sat in its feed and
    the poll in its sleep, and a stop that awaits them waited for ever (a sidecar stopped
    right after its start, on Redis). Called after each store call, before any wait."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def open_store(settings: Settings, clock: Clock) -> TokenStore:
    """The configured store, open. Each store's modules are imported only when it is the
    one configured: the Redis client alone is a fifth of a start's CPU (issue 16)."""
    if settings.store.backend == "memory":
        from sidecar.store.memory import MemoryTokenStore

        return MemoryTokenStore(clock=clock)
    if settings.store.backend == "redis":
        from sidecar.store.redis import RedisTokenStore
        from sidecar.store.redis_connect import RedisConnector

        store = settings.store
        # The clock times the TTLs the store sets; nothing connects until start's ping.
        return RedisTokenStore(
            RedisConnector(store.redis_options()), clock=clock, key_prefix=store.redis_key_prefix
        )
    from sidecar.store.sqlite import SqliteTokenStore

    # The clock also judges write deadlines (issue 13), as the service's clock set them.
    sqlite = SqliteTokenStore(settings.sqlite_path, clock=clock)
    try:
        await sqlite.open()
    except StoreUnavailableError as exc:
        # At start a file that cannot be opened is the operator's setting, not an outage:
        # name it (a bare STORE_UNAVAILABLE said neither which file nor why).
        raise ConfigError(
            f"setting store.sqlite_path: cannot open the SQLite store "
            f"{str(settings.sqlite_path)!r} ({_why(exc.__cause__)})"
        ) from None
    return sqlite


def _why(cause: BaseException | None) -> str:
    """The OS's or SQLite's own words (never data: these name a file condition)."""
    if isinstance(cause, FileExistsError):  # mkdir(exist_ok=True) met a file
        return "its directory is a file"
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    if cause is not None and str(cause):
        return str(cause)
    return "unusable"


async def set_store_health(listeners: Listeners, settings: Settings, reachable: bool) -> None:
    """See the module docstring: which health names go NOT_SERVING, per the policy."""
    await listeners.health.set(STORE_HEALTH_SERVICE, SERVING if reachable else NOT_SERVING)
    refuse = settings.store.on_unavailable == "refuse"
    await listeners.set_health(reachable or not refuse)


class StoreFollower:
    """Keeps the revocation mirror in step with the store, by polling and by the store's
    feed, and reports the store reachable only while both agree it is."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: TokenStore,
        service: TokenService,
        listeners: Listeners,
        metrics: Metrics | None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._service = service
        self._listeners = listeners
        self._metrics = metrics
        # Reachability as last seen by the poll (`poll`) and by the feed (`follow`).
        self._poll_ok = True
        self._feed_ok = True
        self._reachable = True

    @property
    def reachable(self) -> bool:
        return self._reachable

    async def poll(self) -> None:
        """Poll: ping the store and reload the mirror every `store.sync_interval_s`. With SQLite
        this is how other processes' revocations arrive; with a feed it is the backstop."""
        interval = self._settings.store.sync_interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                await self._store.ping()
                await self._service.sync_revocations()
                await self._service.store_sync.check_persistence()
                self._poll_ok = True
            except StoreUnavailableError:
                self._poll_ok = False
            await self._report()
            _stop_if_cancelled()

    async def follow(self) -> None:
        """Push: apply the store's revocation feed to the mirror as entries arrive. Each
        (re)connection opens the feed first and then reconciles (everything written since
        the last reconciliation, or a full read when the store cannot vouch for that: issue
        16), so nothing written while disconnected, or between the two steps, is missed."""
        mirror = self._service.revocations
        delay = _FEED_RETRY_S[0]
        while True:
            try:
                feed = await self._store.open_revocation_feed()
                if feed is None:
                    return  # no push for this store: the poll alone keeps the mirror
                try:
                    await self._service.sync_revocations()
                    self._feed_ok = self._poll_ok = True
                    await self._report()
                    _stop_if_cancelled()
                    delay = _FEED_RETRY_S[0]
                    async for revocation in feed:
                        mirror.add(revocation)
                finally:
                    await feed.close()
            except StoreUnavailableError:
                self._feed_ok = False
                await self._report()
            _stop_if_cancelled()
            await asyncio.sleep(delay)
            delay = min(delay * 2, _FEED_RETRY_S[1])

    async def _report(self) -> None:
        reachable = self._poll_ok and self._feed_ok
        if reachable == self._reachable:
            return
        self._reachable = reachable
        if self._metrics is not None:
            self._metrics.store_up.set(1 if reachable else 0)
        self._service.revocations.set_stale(not reachable)
        log.warning("token store %s", "reachable again" if reachable else "unreachable")
        await set_store_health(self._listeners, self._settings, reachable)
