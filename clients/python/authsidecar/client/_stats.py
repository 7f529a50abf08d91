"""`DecisionStats`: what an interceptor's decision cache and watch stream have done so far.

A frozen snapshot, taken under the `WatchState` lock (`stats()` on either server
interceptor); `authsidecar.client.metrics` exports the same numbers to Prometheus.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

INVALIDATION_KINDS = (
    "token_revoked",
    "family_revoked",
    "key_retired",
    "decisions_reset",
    "resync",  # a sync with reset: true (new epoch, or events no longer replayable)
    "gap",  # a missing sequence number, an unknown event kind, or a broken stream contract
)


def _no_invalidations() -> Mapping[str, int]:
    return MappingProxyType(dict.fromkeys(INVALIDATION_KINDS, 0))


@dataclass(frozen=True)
class DecisionStats:
    """A snapshot of an interceptor's decision cache and watch stream (`stats()`).

    Attributes:
        hits: calls answered from the cache (no sidecar round trip).
        misses: lookups while current that found nothing usable.
        bypassed: lookups while not current: the call went to Verify unconditionally.
        refused_locally: calls refused from the cache, without a sidecar round trip: a
            revocation event had voided their cached decision (UNAUTHENTICATED /
            TOKEN_REVOKED, what the sidecar answers for that token until its `exp`).
        stored / not_stored: Verify answers kept, or not kept (the insertion check refused
            them, the state was not current, or the token is outside `nbf..exp`).
        evictions: entries dropped to stay within `max_entries` / `max_bytes`.
        expirations: entries dropped because the token's `exp` passed.
        entries / bytes: what the cache holds now, refusals included (bytes is the estimate
            it is bounded by).
        tombstones: how many of `entries` are refusals kept in place of revoked decisions.
        invalidations: stream events applied, by kind (`INVALIDATION_KINDS`).
        dropped: decisions those events voided (removed, or turned into refusals).
        current: whether a hit may be served right now.
        staleness_s: seconds since the last message on the stream; None before the first.
        subscriptions: Watch streams opened (the first one included).
    """

    hits: int = 0
    misses: int = 0
    bypassed: int = 0
    refused_locally: int = 0
    stored: int = 0
    not_stored: int = 0
    evictions: int = 0
    expirations: int = 0
    entries: int = 0
    bytes: int = 0
    tombstones: int = 0
    invalidations: Mapping[str, int] = field(default_factory=_no_invalidations)
    dropped: int = 0
    current: bool = False
    staleness_s: float | None = None
    subscriptions: int = 0
