"""Prometheus metrics: per-RPC counts and latency (fed by the call layer of
transport/observing.py), and the registry.

The state read at scrape time (key set, Verify cache, store sync, Watch, key sources) is
transport/metrics_collectors.py. Everything lives in a `CollectorRegistry` owned by the App
(no global registry), served by prometheus_client's HTTP server when `metrics.listen` is set;
with it unset (the default) this module is never imported (issue 16: start-up cost).
Names follow Prometheus conventions: base units (seconds), `_total` counters, `_info` for
labelled constants.

`observe` is on the hot path, so it does as little as it can per call: increments on label
children cached per label tuple (no `labels()` lookup after the first call of each kind). The
domain counters (tokens issued, reuse, revocations) are derived from the method and its
outcome; refreshes are counted by the outcome the domain reported on the call
(`sidecar.calls.record_outcome`: rotated, grace, reused, revoked; "refused" for any other
refusal), so the domain code knows nothing of metrics.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from sidecar.addresses import parse_host_port
from sidecar.errors import ConfigError
from sidecar.keys.remote import RemoteKeySet
from sidecar.keys.ring import KeyRing
from sidecar.keys.watch import KeyWatcher
from sidecar.transport.metrics_collectors import (
    CacheCounters,
    EventCounters,
    KeySourceCollector,
    StateCollector,
    SyncCounters,
    WatchCollector,
)

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
        verify_cache: CacheCounters,
        store_sync: SyncCounters,
        events: EventCounters,
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
        r.register(StateCollector(ring, verify_cache, store_sync, now))
        r.register(WatchCollector(events))
        self._key_sources = KeySourceCollector()
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
