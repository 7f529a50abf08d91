"""The composition root: the one place that picks implementations and wires them together.

Start-up order is the health contract: keys are loaded and checked, the store answers and the
revocation mirror is loaded, and only then do the listeners bind and report SERVING. SIGTERM
(or SIGINT) flips health to NOT_SERVING and keeps serving for `listen.drain_s` (a second
signal cuts that short); then new calls are answered UNAVAILABLE / SHUTTING_DOWN, in-flight
calls get the grace period, the connections are closed, and the store is closed. No call
ends CANCELLED (transport/drain.py, docs/operations.md "Stopping").

Store reachability (issue 3, docs/lifecycle.md) is reported on the health service name
`authsidecar.v1.AuthService/store`. While the store is unreachable the mirror is marked stale;
with `store.on_unavailable: degrade` (default) "" and `authsidecar.v1.AuthService` stay SERVING
(Verify answers from signatures plus the last known revocations), with `refuse` they go
NOT_SERVING too and Verify fails UNAVAILABLE. Reachability is regained only after the mirror
was reloaded in full, so no revocation written meanwhile is missed.

Durability (issue 13): start-up reads how the store persists (`store_persistence=` in the
banner, one warning line when a restart would lose data, re-read on every poll) and every
reconciliation writes back revocations a lost store forgot (tokens/store_sync.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path

from sidecar.clock import Clock, SystemClock
from sidecar.config import KeyFile, Settings, parse_host_port
from sidecar.errors import ConfigError, StoreUnavailableError
from sidecar.keys.generate import generate_key, write_key_file
from sidecar.keys.keyset import KeySource, load_key_set
from sidecar.keys.remote import RemoteKeySet
from sidecar.keys.ring import KeyRing
from sidecar.keys.watch import KeyWatcher
from sidecar.store.base import TokenStore
from sidecar.store.memory import MemoryTokenStore
from sidecar.store.redis import RedisTokenStore
from sidecar.store.redis_connect import RedisConnector
from sidecar.store.sqlite import SqliteTokenStore
from sidecar.tokens.claims import EXTERNAL_ACCESS_TYPS, ClaimsPolicy
from sidecar.tokens.events import EventLog, retired_kids
from sidecar.tokens.issuers import Issuer, Issuers
from sidecar.tokens.service import TokenService
from sidecar.tokens.signing import Signer
from sidecar.transport.jwks_http import JwksHttpServer
from sidecar.transport.metrics import Metrics, MetricsHttpServer
from sidecar.transport.server import (
    AUTH_SERVICE,
    NOT_SERVING,
    SERVING,
    Listeners,
    build_listeners,
)

log = logging.getLogger("authsidecar")
STORE_HEALTH_SERVICE = f"{AUTH_SERVICE}/store"
# Reconnecting the revocation feed: first retry soon, then at most once a second.
_FEED_RETRY_S = (0.05, 1.0)


def key_source(settings: Settings) -> KeySource:
    """Configured key files and directory; with neither, the development key (made on first
    run). The same source is re-read on reload (docs/keys.md)."""
    keys = settings.keys
    files = keys.files
    if not files and keys.directory is None:
        if not keys.dev_generate:  # verify-only: start_app never asks
            raise ConfigError("setting keys.files: no key files configured")
        _dev_key(settings.dev_key_path, keys.dev_alg)
        files = (KeyFile(path=settings.dev_key_path),)
    return KeySource(files=files, directory=keys.directory, signing_kid=keys.signing_kid)


def _dev_key(path: Path, alg: str) -> None:
    if not path.exists():
        _, jwk = generate_key(alg)
        write_key_file(path, jwk)
        log.warning("generated a development signing key at %s: do not use it in production", path)


async def open_store(settings: Settings, clock: Clock) -> TokenStore:
    if settings.store.backend == "memory":
        return MemoryTokenStore(clock=clock)
    if settings.store.backend == "redis":
        store = settings.store
        # The clock times the TTLs the store sets; nothing connects until start's ping.
        return RedisTokenStore(
            RedisConnector(store), clock=clock, key_prefix=store.redis_key_prefix
        )
    # The clock also judges write deadlines (issue 13), as the service's clock set them.
    sqlite = SqliteTokenStore(settings.sqlite_path, clock=clock)
    await sqlite.open()
    return sqlite


@dataclass
class App:
    settings: Settings
    service: TokenService
    store: TokenStore
    listeners: Listeners
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # Reachability as last seen by the poll (`_maintain`) and by the feed (`_follow`).
    _poll_ok: bool = True
    _feed_ok: bool = True
    _reachable: bool = True
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

    def reload_keys(self) -> None:
        """SIGHUP: re-read the key set now."""
        if self.key_watcher is not None:
            self.key_watcher.request_reload()

    @property
    def store_reachable(self) -> bool:
        return self._reachable

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
        self._tasks.append(asyncio.create_task(self._maintain()))
        self._tasks.append(asyncio.create_task(self._follow()))
        if self.key_watcher is not None:
            self._tasks.append(asyncio.create_task(self.key_watcher.run()))
        for remote in self.remote_keys:
            self._tasks.append(asyncio.create_task(remote.run()))

    async def _maintain(self) -> None:
        """Poll: ping the store and reload the mirror every `store.sync_interval_s`. With SQLite
        this is how other processes' revocations arrive; with a feed it is the backstop."""
        interval = self.settings.store.sync_interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                await self.store.ping()
                await self.service.sync_revocations()
                await self.service.store_sync.check_persistence()
                self._poll_ok = True
            except StoreUnavailableError:
                self._poll_ok = False
            await self._report()

    async def _follow(self) -> None:
        """Push: apply the store's revocation feed to the mirror as entries arrive. Each
        (re)connection opens the feed first and then reconciles (everything written since
        the last reconciliation, or a full read when the store cannot vouch for that: issue
        16), so nothing written while disconnected, or between the two steps, is missed."""
        mirror = self.service.revocations
        delay = _FEED_RETRY_S[0]
        while True:
            try:
                feed = await self.store.open_revocation_feed()
                if feed is None:
                    return  # no push for this store: the poll alone keeps the mirror
                try:
                    await self.service.sync_revocations()
                    self._feed_ok = self._poll_ok = True
                    await self._report()
                    delay = _FEED_RETRY_S[0]
                    async for revocation in feed:
                        mirror.add(revocation)
                finally:
                    await feed.close()
            except StoreUnavailableError:
                self._feed_ok = False
                await self._report()
            await asyncio.sleep(delay)
            delay = min(delay * 2, _FEED_RETRY_S[1])

    async def _report(self) -> None:
        reachable = self._poll_ok and self._feed_ok
        if reachable == self._reachable:
            return
        self._reachable = reachable
        if self.metrics is not None:
            self.metrics.store_up.set(1 if reachable else 0)
        self.service.revocations.set_stale(not reachable)
        log.warning("token store %s", "reachable again" if reachable else "unreachable")
        await set_store_health(self.listeners, self.settings, reachable)


async def set_store_health(listeners: Listeners, settings: Settings, reachable: bool) -> None:
    """See the module docstring: which health names go NOT_SERVING, per the policy."""
    await listeners.health.set(STORE_HEALTH_SERVICE, SERVING if reachable else NOT_SERVING)
    refuse = settings.store.on_unavailable == "refuse"
    await listeners.set_health(reachable or not refuse)


async def external_issuers(settings: Settings) -> tuple[Issuers | None, list[RemoteKeySet]]:
    """Each configured issuer's key set after its first fetch (started concurrently), and
    the routing TokenService uses; (None, []) when no issuer is configured."""
    if not settings.issuers:
        return None, []
    remotes = [RemoteKeySet(external) for external in settings.issuers]
    try:
        await asyncio.gather(*(remote.start() for remote in remotes))
    except BaseException:
        for remote in remotes:
            await remote.close()
        raise
    leeway = settings.tokens.leeway_s
    issuers = Issuers(
        settings.tokens.issuer,
        (
            Issuer(
                remote.issuer,
                remote,
                ClaimsPolicy(
                    issuer=remote.issuer,
                    audiences=remote.settings.audiences,
                    leeway_s=leeway,
                    max_lifetime_s=remote.settings.max_lifetime_s,
                    accepted_typs=EXTERNAL_ACCESS_TYPS,
                ),
            )
            for remote in remotes
        ),
    )
    return issuers, remotes


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


async def start_app(settings: Settings, *, clock: Clock | None = None) -> App:
    check_addresses_free(settings)
    source: KeySource | None = None
    if settings.verify_only:
        # No key of our own (issue 14): an empty ring, nothing to watch; Verify trusts the
        # external issuers only, Issue and Refresh answer NO_SIGNING_KEY.
        ring, key_fingerprint = KeyRing(()), ""
    else:
        source = key_source(settings)
        ring, key_fingerprint = load_key_set(source)
    clock = clock or SystemClock()
    store = await open_store(settings, clock)
    metrics_server: MetricsHttpServer | None = None
    jwks_http: JwksHttpServer | None = None
    remotes: list[RemoteKeySet] = []
    signer = Signer(settings.tokens.signing_threads)
    try:
        issuers, remotes = await external_issuers(settings)
        watch = settings.watch
        events = EventLog(
            replay_size=watch.replay_buffer_size,
            queue_size=watch.subscriber_queue_size,
            max_subscribers=watch.max_subscribers,
        )
        for remote in remotes:
            remote.on_replace = lambda old, new: events.publish_retired(retired_kids(old, new))
        service = TokenService(
            ring=ring,
            store=store,
            settings=settings.tokens,
            clock=clock,
            issuers=issuers,
            signer=signer,
            events=events,
        )
        service.revocations.refuse_while_stale = settings.store.on_unavailable == "refuse"
        if settings.store.backend != "memory":  # issue 16: restart from a local snapshot
            snapshot = settings.data_dir / "revocations.snapshot"
            service.store_sync.use_snapshot(snapshot, settings.store.backend)
        await service.start()
        await service.store_sync.check_persistence()
        metrics = Metrics(service) if settings.metrics.listen else None
        listeners = build_listeners(
            service,
            settings.listen,
            unix_socket=settings.public_socket,
            admin_socket=settings.admin_socket,
            envoy=settings.envoy,
            metrics=metrics,
            tracing=settings.tracing,
            watch=watch,
        )
        if metrics is not None:
            metrics_server = MetricsHttpServer(metrics, settings.metrics.listen)
        if settings.http.listen:
            jwks_http = JwksHttpServer(
                lambda: service.ring, issuer=settings.tokens.issuer, settings=settings.http
            )
            await jwks_http.start()
        await listeners.start()
        await set_store_health(listeners, settings, True)
    except BaseException:
        signer.close()
        if metrics_server is not None:
            metrics_server.close()
        if jwks_http is not None:
            await jwks_http.close()
        for remote in remotes:
            await remote.close()
        await store.close()
        raise
    app = App(settings, service, store, listeners, metrics=metrics, metrics_server=metrics_server)
    app.jwks_http = jwks_http
    app.remote_keys = remotes
    app.signer = signer
    if source is not None:
        app.key_watcher = KeyWatcher(
            source,
            ring=ring,
            fingerprint=key_fingerprint,
            on_change=service.replace_ring,
            interval_s=settings.keys.reload_interval_s,
        )
    if metrics is not None:
        metrics.watch_key_sources(app.key_watcher, remotes)
    app.start_background()
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
    if app.listeners.health_tcp_address is not None:
        parts.append(f"health_tcp={app.listeners.health_tcp_address}")
    if app.metrics_server is not None:
        parts.append(f"metrics={app.metrics_server.address}")
    if app.jwks_http is not None:
        parts.append(f"http={app.jwks_http.address}")
    parts.append(f"signing_kid={signing.kid if signing else '-'}")
    parts.append(f"keys={len(ring.keys)} store={app.settings.store.backend}")
    parts.append(f"store_persistence={app.service.store_sync.persistence or '-'}")
    return " ".join(parts)


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then drain."""
    app = await start_app(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, app.reload_keys)
    print(banner(app), flush=True)
    await stop.wait()
    stop.clear()  # a second signal ends the drain early
    listen = settings.listen
    log.info(
        "stopping: health NOT_SERVING, still serving for %ss, then in-flight calls get up to %ss",
        listen.drain_s,
        listen.grace_period_s,
    )
    await app.drain(stop)
    await app.stop()
    log.info("stopped")
