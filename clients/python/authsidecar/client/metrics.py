"""Prometheus export of the server interceptors' decision cache (`pip install
'authsidecar-client[prometheus]'`).

`stats()` already counts everything (`DecisionStats`); this module only shows those numbers
to a Prometheus scrape, read at scrape time under the cache's lock, so the interceptor's hot
path does no extra work for them. Nothing is registered on import: call
`register_decision_metrics({"orders": interceptor, ...})` once, for every interceptor of the
process (into the default registry, or yours). `import authsidecar.client` imports neither
this module nor prometheus_client.

Series (one set per registered interceptor, label `interceptor`):

    authsidecar_client_decision_lookups_total{result=hit|miss|bypassed|refused}
    authsidecar_client_decisions_stored_total / _not_stored_total
    authsidecar_client_decision_evictions_total / _expirations_total
    authsidecar_client_decision_entries, authsidecar_client_decision_bytes
    authsidecar_client_decision_tombstones                (entries that are kept refusals)
    authsidecar_client_decision_invalidations_total{kind=token_revoked|...|gap}
    authsidecar_client_decisions_invalidated_total        (entries those events dropped)
    authsidecar_client_watch_current                      (1: hits may be served)
    authsidecar_client_watch_staleness_seconds            (absent before the first message)
    authsidecar_client_watch_subscriptions_total

Hit ratio: `rate(..._lookups_total{result="hit"}[5m]) / rate(..._lookups_total[5m])`.
`result="refused"` counts calls refused locally (TOKEN_REVOKED) because a revocation event
voided their cached decision: answered without the sidecar, like a hit.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from authsidecar.client._stats import INVALIDATION_KINDS, DecisionStats

__all__ = ["DecisionCollector", "register_decision_metrics"]

_PREFIX = "authsidecar_client_"


class _HasStats(Protocol):
    def stats(self) -> DecisionStats: ...


class DecisionCollector(Collector):
    """Scrape-time metrics of each interceptor's `stats()`, labelled `interceptor=<name>`.

    One collector for every interceptor of a registry: a registry refuses two collectors
    that yield the same series names.
    """

    def __init__(self, interceptors: Mapping[str, _HasStats]) -> None:
        self._interceptors = dict(interceptors)

    def collect(self) -> Iterator[Metric]:
        snapshots = [(name, i.stats()) for name, i in self._interceptors.items()]
        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}

        def add(kind: str, name: str, doc: str, labels: Sequence[str], value: float) -> None:
            family = families.get(name)
            if family is None:
                made = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
                family = families[name] = made(_PREFIX + name, doc, labels=_label_names(labels))
            family.add_metric(list(labels[1::2]), value)

        for interceptor, s in snapshots:
            who = ("interceptor", interceptor)
            for result, count in (
                ("hit", s.hits),
                ("miss", s.misses),
                ("bypassed", s.bypassed),
                ("refused", s.refused_locally),
            ):
                add("counter", "decision_lookups", _LOOKUPS, (*who, "result", result), count)
            add("counter", "decisions_stored", "Verify answers kept in the cache", who, s.stored)
            add("counter", "decisions_not_stored", _NOT_STORED, who, s.not_stored)
            add("counter", "decision_evictions", _EVICTIONS, who, s.evictions)
            add("counter", "decision_expirations", _EXPIRATIONS, who, s.expirations)
            add("gauge", "decision_entries", "Decisions held now", who, s.entries)
            add("gauge", "decision_bytes", "Estimated bytes the decisions hold now", who, s.bytes)
            add("gauge", "decision_tombstones", _TOMBSTONES, who, s.tombstones)
            for kind in INVALIDATION_KINDS:
                count = s.invalidations.get(kind, 0)
                add("counter", "decision_invalidations", _EVENTS, (*who, "kind", kind), count)
            add("counter", "decisions_invalidated", _DROPPED, who, s.dropped)
            add("gauge", "watch_current", _CURRENT, who, s.current)
            if s.staleness_s is not None:
                add("gauge", "watch_staleness_seconds", _STALENESS, who, s.staleness_s)
            add("counter", "watch_subscriptions", _SUBSCRIPTIONS, who, s.subscriptions)
        yield from families.values()


def _label_names(labels: Sequence[str]) -> list[str]:
    """("interceptor", "orders", "kind", "gap") -> ["interceptor", "kind"]."""
    return list(labels[0::2])


_LOOKUPS = (
    "Protected calls by cache result: hit (no sidecar round trip), miss (asked Verify while "
    "current), bypassed (stream not current: asked Verify unconditionally), refused (a "
    "revocation event voided the cached decision: refused without the sidecar)"
)
_TOMBSTONES = "Decisions held now as refusals (revoked since cached; counted in entries)"
_NOT_STORED = "Verify answers not kept (not current, voided in flight, outside nbf..exp)"
_EVICTIONS = "Entries dropped to stay within the bounds"
_EXPIRATIONS = "Entries dropped because the token's exp passed"
_EVENTS = "Watch events applied, by kind"
_DROPPED = "Entries the watch events dropped"
_CURRENT = "1 while the watch stream is current (hits are served)"
_STALENESS = "Seconds since the last message on the watch stream"
_SUBSCRIPTIONS = "Watch streams opened, the first included"


def register_decision_metrics(
    interceptors: Mapping[str, _HasStats] | _HasStats,
    *,
    registry: CollectorRegistry = REGISTRY,
) -> DecisionCollector:
    """Export `stats()` of each interceptor (by name; a lone one is named "default") to
    `registry`, once per registry. Returns the collector (`registry.unregister(it)` to stop).
    """
    named = interceptors if isinstance(interceptors, Mapping) else {"default": interceptors}
    collector = DecisionCollector(named)
    registry.register(collector)
    return collector
