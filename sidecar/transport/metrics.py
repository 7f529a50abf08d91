"""Prometheus metrics: per-RPC counts and latency from one call layer, plus scrape-time state.

Everything lives in a `CollectorRegistry` owned by the App (no global registry), served by
prometheus_client's HTTP server when `metrics.listen` is set. Names follow Prometheus
conventions: base units (seconds), `_total` counters, `_info` for labelled constants.

The layer is on the hot path, so it does as little as it can per call: one ContextVar
set/reset, two clock reads, and increments on label children cached per label tuple (no
`labels()` lookup after the first call of each kind). The domain counters (tokens issued,
reuse, revocations) are derived from the method and its outcome; refreshes are counted by the
outcome the domain reported on the call (`sidecar.calls.record_outcome`: rotated, grace,
reused, revoked; "refused" for any other refusal), so the domain code knows nothing of metrics.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sidecar.addresses import parse_host_port
from sidecar.calls import CallInfo, current_call, request_id_from
from sidecar.errors import ConfigError
from sidecar.keys.remote import RemoteKeySet
from sidecar.keys.ring import KeyRing
from sidecar.keys.watch import KeyWatcher
from sidecar.tokens.cache import VerifyCache
from sidecar.tokens.events import EventLog
from sidecar.tokens.store_sync import StoreSync
from sidecar.transport.layers import Behavior, UnaryLayer

REQUEST_ID = "x-request-id"
# Verify answers in tens of microseconds; Issue/Refresh touch the store (milliseconds).
LATENCY_BUCKETS_S = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)  # fmt: skip

_ISSUE = "/authsidecar.v1.AuthService/Issue"
_REFRESH = "/authsidecar.v1.AuthService/Refresh"
_REVOKE = "/authsidecar.v1.AuthService/Revoke"
_REUSED = "REFRESH_TOKEN_REUSED"
# Refresh outcomes the domain reports: for an answered call, and for a refused one.
_ACCEPTED = ("rotated", "grace")
_REFUSED = ("reused", "revoked")


def _refresh_outcome(ok: bool, outcome: str) -> str:
    """The label of one Refresh: the domain's own word, or "refused" for any other refusal
    (bad token, store unavailable, a failure after an accepted rotation)."""
    return outcome if outcome in (_ACCEPTED if ok else _REFUSED) else "refused"


class Metrics:
    """The registry and the call layer's counters. The scrape-time state is handed over by
    the app, each part by itself (the current key ring, the Verify cache, the store sync,
    the Watch event log), so metrics reads what it shows and nothing of the token engine."""

    def __init__(
        self,
        *,
        ring: Callable[[], KeyRing],
        verify_cache: VerifyCache,
        store_sync: StoreSync,
        events: EventLog,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "authsidecar_requests",
            "RPCs served, by method, gRPC status code and refusal reason",
            ["method", "code", "reason"],
            registry=r,
        )
        self.duration = Histogram(
            "authsidecar_request_duration_seconds",
            "Time to serve an RPC, by method",
            ["method"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.tokens_issued = Counter(
            "authsidecar_tokens_issued", "Tokens signed, by kind", ["kind"], registry=r
        )
        self.refreshes = Counter(
            "authsidecar_refreshes", "Refresh calls, by outcome", ["outcome"], registry=r
        )
        self.reuse_detected = Counter(
            "authsidecar_refresh_reuse_detected",
            "Refresh tokens presented again after rotation (their family was revoked)",
            registry=r,
        )
        self.revocations = Counter(
            "authsidecar_revocations", "Revoke calls answered (RFC 7009)", registry=r
        )
        self.store_up = Gauge(
            "authsidecar_store_up", "1 while the token store answers, else 0", registry=r
        )
        self.store_up.set(1)
        r.register(_StateCollector(ring, verify_cache, store_sync, now))
        r.register(_WatchCollector(events))
        self._key_sources = _KeySourceCollector()
        r.register(self._key_sources)
        self._requests: dict[tuple[str, str, str], Any] = {}
        self._durations: dict[str, Any] = {}

    def watch_key_sources(
        self, watcher: KeyWatcher | None, remotes: Sequence[RemoteKeySet]
    ) -> None:
        """Export the key-set reloads and each external issuer's JWKS fetches, read at scrape
        time; called once the app has built them."""
        self._key_sources.watcher = watcher
        self._key_sources.remotes = tuple(remotes)

    def observe(
        self,
        method: str,
        code: str,
        reason: str,
        seconds: float,
        request: Any,
        outcome: str = "",
    ) -> None:
        key = (method, code, reason)
        child = self._requests.get(key)
        if child is None:
            child = self._requests[key] = self.requests.labels(method, code, reason)
        child.inc()
        timer = self._durations.get(method)
        if timer is None:
            timer = self._durations[method] = self.duration.labels(method)
        timer.observe(seconds)
        if method in (_ISSUE, _REFRESH, _REVOKE):
            self._domain(method, code == "OK", reason, request, outcome)

    def _domain(self, method: str, ok: bool, reason: str, request: Any, outcome: str) -> None:
        if method == _REVOKE:
            if ok:
                self.revocations.inc()
            return
        if method == _REFRESH:
            self.refreshes.labels(_refresh_outcome(ok, outcome)).inc()
            if reason == _REUSED:
                self.reuse_detected.inc()
        if ok:
            self.tokens_issued.labels("access").inc()
            if method == _REFRESH or getattr(request, "refresh_token", False):
                self.tokens_issued.labels("refresh").inc()


class _StateCollector(Collector):
    """Read at scrape time: the key set in use and the Verify cache's counters."""

    def __init__(
        self,
        ring: Callable[[], KeyRing],
        cache: VerifyCache,
        sync: StoreSync,
        now: Callable[[], float],
    ) -> None:
        self._ring = ring
        self._cache = cache
        self._sync = sync
        self._now = now
        self._version = ring().version
        self._since = now()

    def collect(self) -> Iterator[Metric]:
        ring = self._ring()
        if ring.version != self._version:
            self._version, self._since = ring.version, self._now()
        signing = ring.signing_key
        info = GaugeMetricFamily(
            "authsidecar_keyset_info",
            "The key set in use: version names the set of (kid, alg, thumbprint)",
            labels=["version", "signing_kid"],
        )
        info.add_metric([ring.version, signing.kid if signing else ""], 1)
        yield info
        yield GaugeMetricFamily(
            "authsidecar_keyset_age_seconds",
            "Seconds since this process started using the current key set",
            value=max(0.0, self._now() - self._since),
        )
        yield GaugeMetricFamily("authsidecar_keys", "Keys in the key set", value=len(ring.keys))
        cache = self._cache
        hits = CounterMetricFamily(
            "authsidecar_verify_cache_hits", "Verify calls answered from the cache"
        )
        hits.add_metric([], cache.hits)
        yield hits
        misses = CounterMetricFamily(
            "authsidecar_verify_cache_misses", "Verify calls that ran the full verification"
        )
        misses.add_metric([], cache.misses)
        yield misses
        yield GaugeMetricFamily(
            "authsidecar_verify_cache_entries", "Entries in the Verify cache", value=len(cache)
        )
        sync = self._sync
        restored = CounterMetricFamily(
            "authsidecar_store_revocations_restored",
            "Unexpired revocations this sidecar wrote back to a store that had lost them",
        )
        restored.add_metric([], sync.restored)
        yield restored
        epochs = CounterMetricFamily(
            "authsidecar_store_epoch_changes",
            "Times the store's identity changed under this sidecar (its data set was lost)",
        )
        epochs.add_metric([], sync.epoch_changes)
        yield epochs
        persistence = GaugeMetricFamily(
            "authsidecar_store_persistence_info",
            "How the store persists (aof-always, aof-everysec, aof-no, rdb, none, fsync,"
            " process, unknown)",
            labels=["mode"],
        )
        persistence.add_metric([sync.persistence or "unknown"], 1)
        yield persistence


class _WatchCollector(Collector):
    """The Watch event log (issue 15), read at scrape time: the log counts, metrics reads."""

    def __init__(self, events: EventLog) -> None:
        self._events = events

    def collect(self) -> Iterator[Metric]:
        events = self._events
        yield GaugeMetricFamily(
            "authsidecar_watch_subscribers",
            "Watch streams subscribed to this sidecar's event log",
            value=events.subscriber_count,
        )
        published = CounterMetricFamily(
            "authsidecar_watch_events_published",
            "Watch events published, by kind",
            labels=["kind"],
        )
        for kind, count in events.published.items():
            published.add_metric([kind], count)
        yield published
        dropped = CounterMetricFamily(
            "authsidecar_watch_subscribers_dropped",
            "Watch subscribers dropped because their bounded queue overflowed",
        )
        dropped.add_metric([], events.dropped)
        yield dropped
        yield GaugeMetricFamily(
            "authsidecar_watch_sequence",
            "The latest Watch event sequence of this process's log",
            value=events.sequence,
        )


class _KeySourceCollector(Collector):
    """Where keys come from, and whether the last attempt to read them worked: a refused key
    reload or a failing issuer JWKS keeps the last good keys, so nothing else shows it."""

    def __init__(self) -> None:
        self.watcher: KeyWatcher | None = None
        self.remotes: tuple[RemoteKeySet, ...] = ()

    def collect(self) -> Iterator[Metric]:
        if self.watcher is not None:
            status = self.watcher.status
            reloads = CounterMetricFamily(
                "authsidecar_key_reloads",
                "Key sets read from keys.directory, by result",
                labels=["result"],
            )
            reloads.add_metric(["swapped"], status.reloads)
            reloads.add_metric(["refused"], status.failures)
            yield reloads
            yield GaugeMetricFamily(
                "authsidecar_key_reload_ok",
                "1 unless the last key set read was refused (the last good set is in use)",
                value=1 if status.healthy else 0,
            )
        if not self.remotes:
            return
        fetches = CounterMetricFamily(
            "authsidecar_issuer_jwks_fetches",
            "External issuers' JWKS fetches, by issuer and result",
            labels=["issuer", "result"],
        )
        demand = CounterMetricFamily(
            "authsidecar_issuer_jwks_demand_fetches",
            "JWKS fetches started by a token naming a kid not yet known",
            labels=["issuer"],
        )
        up = GaugeMetricFamily(
            "authsidecar_issuer_jwks_ok",
            "1 while the issuer's last JWKS fetch succeeded (else its last good keys are used)",
            labels=["issuer"],
        )
        for key_set in sorted(self.remotes, key=lambda r: r.issuer):
            issuer, remote = key_set.issuer, key_set.status
            fetches.add_metric([issuer, "ok"], remote.fetches)
            fetches.add_metric([issuer, "failed"], remote.failures)
            demand.add_metric([issuer], remote.demand_fetches)
            healthy = remote.version is not None and remote.last_error is None
            up.add_metric([issuer], 1 if healthy else 0)
        yield fetches
        yield demand
        yield up


def observing(metrics: Metrics | None) -> UnaryLayer:
    """The outermost layer (transport/layers.py): opens the call's `CallInfo` (request id,
    peer, and the reason handlers record), then counts and times the call."""

    def layer(behavior: Behavior, method: str) -> Behavior:
        async def observed(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            supplied = None
            for key, value in context.invocation_metadata() or ():
                if key == REQUEST_ID:
                    supplied = value if isinstance(value, str) else None
            call = CallInfo(request_id_from(supplied), method, context.peer())
            token = current_call.set(call)
            start = time.perf_counter()
            code = "UNKNOWN"
            try:
                response = await behavior(request, context)
                code = _code_name(context.code(), default="OK")
                return response
            except BaseException:
                code = _code_name(context.code(), default="UNKNOWN")
                raise
            finally:
                if metrics is not None:
                    elapsed = time.perf_counter() - start
                    metrics.observe(method, code, call.reason, elapsed, request, call.outcome)
                current_call.reset(token)

        return observed

    return layer


def _code_name(code: Any, *, default: str) -> str:
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):
        for status in grpc.StatusCode:
            if status.value[0] == code:
                return status.name
    return default


class MetricsHttpServer:
    """prometheus_client's threaded HTTP server (`/metrics`) on `metrics.listen`."""

    def __init__(self, metrics: Metrics, listen: str) -> None:
        host, port = parse_host_port(listen)
        try:
            self._server, self._thread = start_http_server(
                port, addr=host, registry=metrics.registry
            )
        except OSError as exc:
            raise ConfigError(
                f"setting metrics.listen: cannot listen on {listen!r}: {exc.strerror}"
            ) from None
        self.address = f"{host}:{self._server.server_port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
