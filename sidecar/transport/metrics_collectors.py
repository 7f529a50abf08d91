"""Prometheus collectors read at scrape time: the state of the parts the app hands over.

Each part is handed over by itself (the current key ring, the Verify cache's counters, the
store sync, the Watch event log, the key sources), declared here by what the collectors read,
so metrics reads what it shows and nothing else of the token engine. Nothing here runs per
call: the per-call counters are transport/metrics.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sidecar.keys.remote import RemoteKeySet
from sidecar.keys.ring import KeyRing
from sidecar.keys.watch import KeyWatcher
from sidecar.tokens.events import EventKind

__all__ = [
    "CacheCounters",
    "EventCounters",
    "KeySourceCollector",
    "StateCollector",
    "SyncCounters",
    "WatchCollector",
]


class CacheCounters(Protocol):
    """The Verify cache, as metrics reads it (tokens/cache.py)."""

    @property
    def hits(self) -> int: ...

    @property
    def misses(self) -> int: ...

    def __len__(self) -> int: ...


class SyncCounters(Protocol):
    """The revocation mirror's reconciliation with the store (tokens/store_sync.py)."""

    @property
    def restored(self) -> int: ...

    @property
    def epoch_changes(self) -> int: ...

    @property
    def persistence(self) -> str: ...


class EventCounters(Protocol):
    """The Watch event log's counts (tokens/event_log.py)."""

    @property
    def subscriber_count(self) -> int: ...

    @property
    def published(self) -> Mapping[EventKind, int]: ...

    @property
    def dropped(self) -> int: ...

    @property
    def sequence(self) -> int: ...


class StateCollector(Collector):
    """Read at scrape time: the key set in use and the Verify cache's counters."""

    def __init__(
        self,
        ring: Callable[[], KeyRing],
        cache: CacheCounters,
        sync: SyncCounters,
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


class WatchCollector(Collector):
    """The Watch event log (issue 15), read at scrape time: the log counts, metrics reads."""

    def __init__(self, events: EventCounters) -> None:
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


class KeySourceCollector(Collector):
    """Where keys come from, and whether the last attempt to read them worked: a refused key
    reload or a failing issuer JWKS keeps the last good keys, so nothing else shows it."""

    def __init__(self) -> None:
        self.watcher: KeyWatcher | None = None
        self.remotes: Sequence[RemoteKeySet] = ()

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
