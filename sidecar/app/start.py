"""Starting and running a sidecar: the order things are made in, the banner, the signals.

Start-up order is the health contract: keys are loaded and checked, the store answers and the
revocation mirror is loaded, and only then do the listeners bind and report SERVING
(app/store.py says what the store's reachability does to health afterwards). Start-up also
reads how the store persists (`store_persistence=` in the banner, one warning line when a
restart would lose data).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import TYPE_CHECKING

from sidecar.app.keys import external_issuers, key_source
from sidecar.app.ports import check_addresses_free
from sidecar.app.running import App
from sidecar.app.store import open_store, set_store_health
from sidecar.clock import Clock, SystemClock
from sidecar.config import Settings
from sidecar.errors import StoreUnavailableError
from sidecar.keys.keyset import KeySource, load_key_set
from sidecar.keys.remote import RemoteKeySet
from sidecar.keys.ring import KeyRing
from sidecar.keys.watch import KeyWatcher
from sidecar.logs import announce
from sidecar.tokens.event_log import EventLog
from sidecar.tokens.events import retired_kids
from sidecar.tokens.service import TokenService
from sidecar.tokens.signing import Signer
from sidecar.transport.jwks_http import JwksHttpServer
from sidecar.transport.responses import memo_size
from sidecar.transport.server import build_listeners
from sidecar.transport.servicer import AuthParts

if TYPE_CHECKING:
    from sidecar.transport.metrics import Metrics, MetricsHttpServer

log = logging.getLogger("authsidecar")


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
        options = settings.tokens.options()
        service = TokenService(
            ring=ring,
            store=store,
            settings=options,
            clock=clock,
            issuers=issuers,
            signer=signer,
            events=events,
        )
        service.revocations.refuse_while_stale = settings.store.on_unavailable == "refuse"
        if settings.store.backend != "memory":  # issue 16: restart from a local snapshot
            snapshot = settings.data_dir / "revocations.snapshot"
            service.store_sync.use_snapshot(
                snapshot, settings.store.backend, shared=settings.store.redis_snapshot
            )
        try:
            await service.start()
        except StoreUnavailableError:
            raise StoreUnavailableError(_unreachable_at_start(settings)) from None
        await service.store_sync.check_persistence()
        metrics: Metrics | None = None
        if settings.metrics.listen:
            # Imported only when on (the default is off): prometheus_client costs every start.
            from sidecar.transport.metrics import Metrics, MetricsHttpServer

            metrics = Metrics(
                ring=lambda: service.ring,
                verify_cache=service.verify_cache,
                store_sync=service.store_sync,
                events=events,
            )
        # What the gRPC handlers use, each part by itself (transport/servicer.py).
        parts = AuthParts(
            flows=service,
            events=events,
            max_token_bytes=options.max_token_bytes,
            memo_entries=memo_size(options.verify_cache_entries, options.verify_cache_bytes),
            memo_holds=service.verify_cache.holds,
        )
        listeners = build_listeners(
            parts,
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
    key_watcher = None
    if source is not None:
        key_watcher = KeyWatcher(
            source,
            ring=ring,
            fingerprint=key_fingerprint,
            on_change=service.replace_ring,
            interval_s=settings.keys.reload_interval_s,
        )
    app = App(
        settings,
        service,
        store,
        listeners,
        metrics=metrics,
        metrics_server=metrics_server,
        key_watcher=key_watcher,
        jwks_http=jwks_http,
        remote_keys=remotes,
        signer=signer,
    )
    if metrics is not None:
        metrics.watch_key_sources(app.key_watcher, remotes)
    app.start_background()
    # The first load's stages are sorted into buckets from now on (issue 16: not before
    # serving; lookups are exact either way, tokens/store_sync.py).
    service.store_sync.start_settling()
    return app


def _unreachable_at_start(settings: Settings) -> str:
    """Which setting to look at when the store does not answer at start (a bare "token store
    unavailable" named nothing). The URL itself is not printed: it may hold a password."""
    store = settings.store
    if store.backend == "redis":
        return (
            f"token store unavailable at start: Redis ({store.redis_mode}, store.redis_url) "
            f"did not answer within store.redis_timeout_s={store.redis_timeout_s}; start it, "
            "or correct the setting"
        )
    return f"token store unavailable at start (store.backend={store.backend})"


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
    """Run until SIGTERM or SIGINT, then drain (app/running.py)."""
    app = await start_app(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, app.reload_keys)
    announce(banner(app))  # never blocks nor raises on a stalled or closed stdout
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
