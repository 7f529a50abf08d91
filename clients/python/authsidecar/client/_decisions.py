"""The server interceptors' decision cache: the sidecar's Verify results, kept at the callee.

What an entry is: the `VerifiedClaims` the sidecar returned for one token under one set of
per-call requirements, unchanged, keyed by SHA-256 of the token text plus the audience and
the sorted required scopes asked for. A hit therefore means "these very bytes, asked the very
same question, were answered OK by the sidecar"; a forged token that reuses claims has other
bytes and misses.

What keeps an entry true, besides the watch stream (`_watch_state.WatchState`) that drops it:

* time: an entry is served only while `nbf <= now < exp` (the token's own claims, on the
  interceptor's epoch clock), and is dropped once `exp` has passed; the sidecar's leeway is
  never extended to cached decisions, so a hit is never more lenient than Verify;
* indexes by `(iss, jti)`, `(iss, sid)` and `kid`, so TokenRevoked, FamilyRevoked and
  KeyRetired reach exactly the entries they void, and `clear()` drops all;
* bounds: `max_entries` and `max_bytes` (an estimate, `entry_bytes`), least recently used out.

**Refusals kept in place (tombstones).** TokenRevoked and FamilyRevoked do not drop the
entries they void: each becomes a refusal, served as `REVOKED` until the token's `exp`,
because the sidecar's answer for that exact key is then known. Its verifier
(sidecar/tokens/verifier.py) checks the key, the signature, the static claims, the time
window and the audience before revocation, and the scopes after it; all of those held for
this token under these requirements when the decision was made, and revocations are kept
at least until `exp` (tokens/revoke.py, and refresh.py for a family), so until `exp`
Verify can only answer TOKEN_REVOKED. What could change an earlier check ends the
refusal too: past `exp` (or before `nbf`) it is not served and Verify decides
(TOKEN_EXPIRED, ...); KeyRetired for its kid and `clear()` (DecisionsReset, resync, gap)
drop it. A refusal keeps its entry's claims (for `exp`, `nbf` and the indexes) and its
charge against the bounds, and leaves by LRU like any entry: evicted, the next call simply
asks Verify.

Not thread-safe by itself: `WatchState` holds the one lock around it.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Final, TypeVar

from authsidecar.client._models import VerifiedClaims

DEFAULT_MAX_ENTRIES = 10_000
DEFAULT_MAX_BYTES = 32 << 20
# Per entry besides the token-proportional part: the key tuple, the entry, the index sets and
# the VerifiedClaims object. The claims mapping is charged by token length: a decoded claims
# dict costs a few times its JSON, and the JSON is about 3/4 of the token. Errs high
# (tests/client/test_decision_cache.py measures it with tracemalloc).
_ENTRY_OVERHEAD = 1600
_BYTES_PER_TOKEN_CHAR = 4

Key = tuple[bytes, str, tuple[str, ...]]
_sha256 = hashlib.sha256
_K = TypeVar("_K")


class Refused(Enum):
    """What a lookup finds where a revocation voided the decision (see the module docstring)."""

    REVOKED = "TOKEN_REVOKED"


REVOKED: Final = Refused.REVOKED


def entry_bytes(token_length: int) -> int:
    """What one entry for a token of this length is charged against `max_bytes`."""
    return _ENTRY_OVERHEAD + _BYTES_PER_TOKEN_CHAR * token_length


def decision_key(token: str, audience: str, required_scopes: Sequence[str]) -> Key:
    """Order and repetition of scopes do not change Verify's answer, so not the key either."""
    return key_for(token, audience, scopes_key(required_scopes))


def scopes_key(required_scopes: Sequence[str]) -> tuple[str, ...]:
    """The scopes as the key holds them (the interceptors compute it once per method)."""
    return tuple(sorted(set(required_scopes)))


def key_for(token: str, audience: str, scopes: tuple[str, ...]) -> Key:
    """`decision_key` with the scopes already as `scopes_key` returns them."""
    return (_sha256(token.encode()).digest(), audience, scopes)


@dataclass(slots=True)
class _Entry:
    claims: VerifiedClaims
    jti: tuple[str, str]
    sid: tuple[str, str] | None
    kid: str
    size: int
    revoked: bool = False  # a refusal kept in place of the decision (a tombstone)


def _sid(claims: VerifiedClaims) -> str | None:
    sid = claims.claims.get("sid")
    return sid if isinstance(sid, str) and sid else None


class DecisionCache:
    """Bounded LRU of decisions with revocation indexes; see the module docstring."""

    def __init__(
        self, *, max_entries: int = DEFAULT_MAX_ENTRIES, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("max_entries and max_bytes must be positive")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Key, _Entry] = OrderedDict()
        self._by_jti: dict[tuple[str, str], set[Key]] = {}
        self._by_sid: dict[tuple[str, str], set[Key]] = {}
        self._by_kid: dict[str, set[Key]] = {}
        self.bytes = 0
        self.evictions = 0  # dropped to stay within the bounds
        self.expirations = 0  # dropped because the token's exp passed
        self.tombstones = 0  # entries that are refusals (`REVOKED`), counted in len()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Key, now: float) -> VerifiedClaims | Refused | None:
        """The decision, or `REVOKED` for a refusal, if it holds at `now` (epoch seconds):
        `nbf <= now < exp`."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        claims = entry.claims
        if now >= claims.exp:
            self._remove(key)
            self.expirations += 1
            return None
        if now < claims.nbf:
            return None
        self._entries.move_to_end(key)
        return REVOKED if entry.revoked else claims

    def put(self, key: Key, claims: VerifiedClaims, token_length: int, now: float) -> bool:
        """Keep a decision; False (nothing kept) when it is already outside `nbf..exp` or
        larger than the whole byte bound."""
        size = entry_bytes(token_length)
        if now >= claims.exp or now < claims.nbf or size > self.max_bytes:
            return False
        if key in self._entries:
            self._remove(key)
        entry = _Entry(claims, (claims.iss, claims.jti), None, claims.kid, size)
        sid = _sid(claims)
        if sid is not None:
            entry.sid = (claims.iss, sid)
            self._by_sid.setdefault(entry.sid, set()).add(key)
        self._by_jti.setdefault(entry.jti, set()).add(key)
        self._by_kid.setdefault(entry.kid, set()).add(key)
        self._entries[key] = entry
        self.bytes += size
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            oldest = next(iter(self._entries))
            self._remove(oldest)
            self.evictions += 1
        return True

    def revoke_token(self, iss: str, jti: str) -> int:
        """Turn the decisions about the token `(iss, jti)` into refusals; how many."""
        return self._refuse(self._by_jti.get((iss, jti)))

    def revoke_family(self, iss: str, sid: str) -> int:
        return self._refuse(self._by_sid.get((iss, sid)))

    def retire_key(self, kid: str) -> int:
        return self._drop(self._by_kid.get(kid))

    def clear(self) -> int:
        """Drop everything; how many decisions (refusals not counted) were dropped."""
        dropped = len(self._entries) - self.tombstones
        self._entries.clear()
        self._by_jti.clear()
        self._by_sid.clear()
        self._by_kid.clear()
        self.bytes = 0
        self.tombstones = 0
        return dropped

    def _refuse(self, keys: set[Key] | None) -> int:
        refused = 0
        for key in keys or ():
            entry = self._entries[key]
            if not entry.revoked:
                entry.revoked = True
                refused += 1
        self.tombstones += refused
        return refused

    def _drop(self, keys: set[Key] | None) -> int:
        """Remove these entries; how many were decisions (refusals are not counted)."""
        if not keys:
            return 0
        doomed = list(keys)
        before = self.tombstones
        for key in doomed:
            self._remove(key)
        return len(doomed) - (before - self.tombstones)

    def _remove(self, key: Key) -> None:
        entry = self._entries.pop(key)
        self.bytes -= entry.size
        self.tombstones -= entry.revoked
        _unindex(self._by_jti, entry.jti, key)
        _unindex(self._by_kid, entry.kid, key)
        if entry.sid is not None:
            _unindex(self._by_sid, entry.sid, key)


def _unindex(index: dict[_K, set[Key]], at: _K, key: Key) -> None:
    keys = index.get(at)
    if keys is not None:
        keys.discard(key)
        if not keys:
            del index[at]
