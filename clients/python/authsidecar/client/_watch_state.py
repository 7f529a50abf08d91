"""What the sidecar's Watch stream has told this process, and what the interceptors may trust.

One `WatchState` per server interceptor holds the decision cache and applies the stream's
events to it under one lock; the sync watcher thread and the asyncio watcher task feed the
same object (`_watch.py`), and the sync and asyncio interceptors read it the same way.

The rules, from auth.proto's comments on `Watch`:

* **Current** means: a `sync` was received on the live stream; after a resumed sync
  (`reset: false`) a heartbeat has confirmed the replay is complete (a heartbeat follows every
  event up to its number); no gap was seen; and some message arrived within the staleness
  bound (`staleness_s`, default 3x the stream's `heartbeat_interval_ms`). Not current:
  `consult` serves no hit and the interceptor asks Verify. Decisions are kept across a cut; a
  resubscription with `reset: false` replays what was missed before they are served again,
  and `reset: true` drops them all. The same holds for refusals kept in place of revoked
  decisions (`_decisions.py`): served only while current, else Verify decides.
* **Gaps**: a numbered event (`TokenRevoked`, `FamilyRevoked`, `KeyRetired`,
  `DecisionsReset`) must take `sequence` last+1, and a heartbeat must carry last; otherwise
  the state acts as on reset (drops every decision). An event kind this library does not
  know is treated the same way: it cannot know what it voids.
* **Insertion race**: a position is taken (`consult`) before Verify is sent; `admit()` caches the
  answer only if the state is current now, stayed current since (no cut, no lapse of the
  staleness bound, no reset: one `generation` counter), and no event applied since voids it.
  The sidecar sends an event only after its Verify refuses what the event voids, so an event
  is either seen here by `admit` (refused), or applied after it (drops the entry), or lost
  with the stream (a new generation, replay or reset on resubscription).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple

from authsidecar.client._decisions import REVOKED, DecisionCache, Key, Refused
from authsidecar.client._models import VerifiedClaims
from authsidecar.client._stats import INVALIDATION_KINDS, DecisionStats
from authsidecar.v1 import auth_pb2

# How many recent invalidations `admit` can look back over; a Verify slower than this many
# events is simply not cached.
HISTORY = 4096
STALENESS_HEARTBEATS = 3
# Before the first sync of a stream there is no heartbeat interval: a stream that sends
# nothing for this long is cut and resubscribed.
CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class Position:
    """Where the state stood when a Verify was sent (`WatchState.position`)."""

    generation: int
    applied: int


class _Applied(NamedTuple):
    number: int
    kind: str
    first: str  # iss, or kid
    second: str  # jti or sid


def _sid(claims: VerifiedClaims) -> str:
    sid = claims.claims.get("sid")
    return sid if isinstance(sid, str) else ""


def _voids(applied: _Applied, claims: VerifiedClaims) -> bool:
    if applied.kind == "token_revoked":
        return (applied.first, applied.second) == (claims.iss, claims.jti)
    if applied.kind == "family_revoked":
        return (applied.first, applied.second) == (claims.iss, _sid(claims))
    return applied.first == claims.kid  # key_retired


class WatchState:
    """Thread-safe; shared by a watcher (thread or task) and its interceptor's calls."""

    def __init__(
        self,
        cache: DecisionCache,
        *,
        staleness_s: float | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if staleness_s is not None and staleness_s <= 0:
            raise ValueError("staleness_s must be positive")
        self._cache = cache
        self._configured_staleness_s = staleness_s
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._epoch = ""
        self._sequence = 0  # the last numbered event applied in `_epoch`
        # After a resumed sync: the missed events are being replayed, and only the next
        # heartbeat (sent after every event up to its number) says they all arrived.
        self._replaying = False
        self._bound_s = 0.0  # staleness bound of the live stream; 0 = never current
        self._interval_s = 0.0  # the live stream's heartbeat interval
        self._connected = False  # a sync was applied on the live stream
        # `_connected and _bound_s > 0 and not _replaying`, kept by every change of those
        # three (`_relive`): a hit then reads one flag and one clock (`_current`).
        self._live = False
        self._last_message_at: float | None = None
        self._generation = 0
        self._applied = 0
        self._history: deque[_Applied] = deque(maxlen=HISTORY)
        self._counts = dict.fromkeys(INVALIDATION_KINDS, 0)
        self._hits = self._misses = self._bypassed = self._refused_locally = 0
        self._stored = self._not_stored = self._dropped = self._subscriptions = 0

    # ---- the watcher's side -------------------------------------------------------------

    def request(self) -> auth_pb2.WatchRequest:
        """Resume where the last stream left off (a first subscription sends an empty epoch)."""
        with self._lock:
            self._subscriptions += 1
            return auth_pb2.WatchRequest(epoch=self._epoch, after_sequence=self._sequence)

    def read_timeout_s(self) -> float:
        """How long the watcher waits for the next message before cutting a silent stream:
        the staleness bound, but never less than 3 heartbeat intervals (a bound configured
        below the interval makes hits rarer; it must not cut healthy streams)."""
        with self._lock:
            silent_s = max(self._bound_s, STALENESS_HEARTBEATS * self._interval_s)
            return silent_s if self._connected and silent_s else CONNECT_TIMEOUT_S

    def disconnected(self) -> None:
        """The stream ended (or was cut): no hits until the next one has caught up."""
        with self._lock:
            if self._connected:
                self._generation += 1
            self._connected = False
            self._live = False

    def apply(self, event: auth_pb2.WatchEvent) -> bool:
        """Apply one message; False when it breaks the stream's contract (the state has then
        dropped everything and forgotten the epoch: the watcher must resubscribe)."""
        with self._lock:
            try:
                return self._apply(event)
            finally:
                self._live = self._connected and self._bound_s > 0 and not self._replaying

    def _apply(self, event: auth_pb2.WatchEvent) -> bool:
        """`apply`, under the lock."""
        now = self._monotonic()
        if self._connected and self._lapsed(now):
            self._generation += 1  # not current for a while: in-flight Verifies unsafe
        self._last_message_at = now
        kind = event.WhichOneof("event")
        if kind == "sync":
            return self._sync(event)
        if not self._connected or event.epoch != self._epoch:
            self._reset("gap")
            self._epoch, self._sequence, self._connected = "", 0, False
            return False
        if kind == "heartbeat":
            if event.sequence != self._sequence:
                self._reset("gap")
                self._sequence = event.sequence
            self._replaying = False
            return True
        if kind is None or event.sequence != self._sequence + 1:
            self._reset("gap")  # unknown kind (newer server) or a missing number
        elif kind == "decisions_reset":
            self._reset("decisions_reset")
        else:
            self._invalidate(kind, event)
        self._sequence = event.sequence
        return True

    def _sync(self, event: auth_pb2.WatchEvent) -> bool:
        if self._connected:  # a second sync on one stream: not the contract
            self._reset("gap")
            self._epoch, self._sequence, self._connected = "", 0, False
            return False
        resumed = (
            not event.sync.reset
            and event.epoch == self._epoch
            and self._epoch != ""
            and event.sequence >= self._sequence
        )
        if not resumed:
            self._reset("resync")
            self._sequence = event.sequence
        self._epoch = event.epoch
        self._replaying = resumed
        self._interval_s = event.sync.heartbeat_interval_ms / 1000
        self._bound_s = self._configured_staleness_s or STALENESS_HEARTBEATS * self._interval_s
        self._connected = True
        return True

    def _invalidate(self, kind: str, event: auth_pb2.WatchEvent) -> None:
        if kind == "token_revoked":
            iss, second = event.token_revoked.iss, event.token_revoked.jti
            dropped = self._cache.revoke_token(iss, second)
        elif kind == "family_revoked":
            iss, second = event.family_revoked.iss, event.family_revoked.sid
            dropped = self._cache.revoke_family(iss, second)
        else:
            iss, second = event.key_retired.kid, ""
            dropped = self._cache.retire_key(iss)
        self._applied += 1
        self._history.append(_Applied(self._applied, kind, iss, second))
        self._counts[kind] += 1
        self._dropped += dropped

    def _reset(self, kind: str) -> None:
        """Every decision is void; Verifies in flight must not be cached either."""
        self._counts[kind] += 1
        self._dropped += self._cache.clear()
        self._generation += 1

    # ---- the interceptor's side ---------------------------------------------------------

    def _lapsed(self, now: float) -> bool:
        last = self._last_message_at
        return last is None or now - last > self._bound_s

    def _current(self) -> bool:
        last = self._last_message_at
        return self._live and last is not None and self._monotonic() - last <= self._bound_s

    def consult(
        self, key: Key, now: float
    ) -> tuple[VerifiedClaims | Refused | None, Position | None]:
        """A cached decision or refusal (only while current; `now` is the epoch clock for
        exp/nbf), or else the position to hand to `admit` with Verify's answer (None: not
        current, the answer will not be kept)."""
        with self._lock:
            if not self._current():
                self._bypassed += 1
                return None, None
            found = self._cache.get(key, now)
            if found is REVOKED:
                self._refused_locally += 1
                return found, None
            if found is not None:
                self._hits += 1
                return found, None
            self._misses += 1
            return None, Position(self._generation, self._applied)

    def admit(
        self,
        position: Position | None,
        key: Key,
        claims: VerifiedClaims,
        token_length: int,
        now: float,
    ) -> bool:
        """Cache Verify's answer unless something since `position` may have voided it."""
        with self._lock:
            stored = (
                position is not None
                and position.generation == self._generation
                and self._current()
                and self._unvoided_since(position.applied, claims)
                and self._cache.put(key, claims, token_length, now)
            )
            if stored:
                self._stored += 1
            else:
                self._not_stored += 1
            return stored

    def _unvoided_since(self, applied: int, claims: VerifiedClaims) -> bool:
        if applied == self._applied:
            return True
        if not self._history or self._history[0].number > applied + 1:
            return False  # the events since have left the history: cannot tell
        for record in reversed(self._history):
            if record.number <= applied:
                break
            if _voids(record, claims):
                return False
        return True

    def stats(self) -> DecisionStats:
        with self._lock:
            last = self._last_message_at
            return DecisionStats(
                hits=self._hits,
                misses=self._misses,
                bypassed=self._bypassed,
                refused_locally=self._refused_locally,
                stored=self._stored,
                not_stored=self._not_stored,
                evictions=self._cache.evictions,
                expirations=self._cache.expirations,
                entries=len(self._cache),
                tombstones=self._cache.tombstones,
                bytes=self._cache.bytes,
                invalidations=MappingProxyType(dict(self._counts)),
                dropped=self._dropped,
                current=self._current(),
                staleness_s=None if last is None else self._monotonic() - last,
                subscriptions=self._subscriptions,
            )
