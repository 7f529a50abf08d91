"""A bounded cache of signature-and-claims results for Verify (issue 7).

What is cached is the outcome of the expensive, time-independent part of Verify: strict JWS
parsing, the signature check, and the claim rules that do not depend on the clock or on the
call (typ, required claims, types, iss, the policy's audiences, lifetime). It is never a
shortcut around a check:

* The key is SHA-256 of the exact token text, so a hit means "these very bytes were verified
  before". A forged token that reuses a valid `jti` (or any other claim) has other bytes, so
  it misses and goes through the full verification.
* A hit is accepted only while the key that verified it is still the ring's key for that
  `kid` (identity, not equality): a rotated-out or replaced key invalidates its entries
  without any coordination with whoever swaps the ring.
* Everything that can change between two calls is checked again on every hit by the caller
  (`TokenService.verify`): `exp`/`nbf`/`iat` against now with the leeway, revocation in the
  mirror, the per-call audience and the required scopes.
* Only successes are stored: a failing token is never cached, so it cannot be used to fill
  the cache cheaply (each miss costs the sender a full verification, as before).

Bounded twice: by entries and by an estimate of their bytes (`entry_bytes`), least recently
used first out. Verify runs on the event loop thread, but the cache takes a lock anyway so a
caller on another thread cannot corrupt it (uncontended, it costs ~0.1 µs).
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass

from cachetools import LRUCache

from sidecar.keys.material import KeyMaterial
from sidecar.tokens.model import VerifiedToken

__all__ = ["CachedVerification", "VerifyCache", "entry_bytes"]

# Per-entry bytes besides the token-proportional part: the digest key, the cache's links,
# the VerifiedToken and Claims objects and a small claims dict. Measured with tracemalloc by
# `python -m bench --cache-cost` (docs/performance.md); the estimate errs on the high side.
_ENTRY_OVERHEAD = 1600
# A decoded claims dict costs a few times its JSON size; tokens are ~3/4 claims by length.
_BYTES_PER_TOKEN_CHAR = 4


def entry_bytes(token_length: int) -> int:
    """The size charged to the byte bound for one cached token of this length."""
    return _ENTRY_OVERHEAD + _BYTES_PER_TOKEN_CHAR * token_length


@dataclass(frozen=True, slots=True)
class CachedVerification:
    verified: VerifiedToken
    key: KeyMaterial
    size: int


def _size(entry: CachedVerification) -> int:
    return entry.size


class VerifyCache:
    """LRU of `CachedVerification` by SHA-256 of the token; `max_entries == 0` disables it."""

    def __init__(self, *, max_entries: int, max_bytes: int) -> None:
        if max_entries < 0 or max_bytes < 0:
            raise ValueError("cache bounds must be non-negative")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.enabled = max_entries > 0 and max_bytes > 0
        self._entries: LRUCache[bytes, CachedVerification] = LRUCache(
            maxsize=max(max_bytes, 1), getsizeof=_size
        )
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def current_bytes(self) -> int:
        return int(self._entries.currsize)

    @staticmethod
    def digest(token: str) -> bytes:
        return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()

    def get(self, digest: bytes) -> CachedVerification | None:
        """The entry; the caller must check `entry.key` is still the key for its kid."""
        with self._lock:
            return self._entries.get(digest)

    def count(self, *, hit: bool) -> None:
        """Record the caller's verdict (an entry whose key changed is a miss): metrics."""
        if hit:
            self.hits += 1
        else:
            self.misses += 1

    def put(self, digest: bytes, verified: VerifiedToken, key: KeyMaterial, length: int) -> None:
        size = entry_bytes(length)
        if not self.enabled or size > self.max_bytes:
            return
        entry = CachedVerification(verified, key, size)
        with self._lock:
            entries = self._entries
            while len(entries) >= self.max_entries and digest not in entries:
                entries.popitem()
            entries[digest] = entry

    def discard(self, digest: bytes) -> None:
        with self._lock:
            self._entries.pop(digest, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
