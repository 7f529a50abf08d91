"""The verifier's two memories (issue 7), bounded data structures with no policy of their own.

What may be stored, and what is checked again on every use, is decided in one place:
tokens/verifier.py (its docstring states the rules). This module only keeps things:

* `VerifyCache`: the outcome of a verification's time-independent part (parse, key,
  signature, the claim rules that depend on neither the clock nor the call), with the key
  that verified it and whose keys those were (ours or an external issuer's). LRU, bounded
  twice: by entries and by an estimate of their bytes (`entry_bytes`). Verify runs on the
  event loop thread, but every change takes a lock anyway so a caller on another thread
  cannot corrupt it (uncontended, it costs ~0.1 µs).

  Its miss path costs what a call without the cache costs (issue 15), by two choices:

  - the lookup key is Python's `hash` of the token text (SipHash with a per-process
    secret, ~0.2 µs for a token, and cached in the string), not its SHA-256 (~0.6 µs
    in a loop, several times that in the server); the entry holds the SHA-256 of the
    exact text, compared on every hit, so a token whose `hash` collides with a cached
    one's misses. The cache never holds token text.
  - a token is stored only the second time it is verified (`seen_before`): a one-shot
    token costs a set insertion of its `hash`, not an entry (whose allocation and the
    retained claims made a miss 4-11 µs dearer than no cache, measured in-process). A
    token used many times pays one extra full verification before its hits start.
    The first sightings are a set of `max_entries` ints at most, emptied when full.

* `HeaderMemo`: parsed headers by their exact base64url segment. All tokens of one key share
  a header, so decoding and strictly parsing it (~2 µs) is paid once per key, not per token.
  Entries are read-only views, as every caller shares them; emptied when full.

Both belong to one `Verifier` (no module-level state): two services in one process, or two
tests, never see each other's entries.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

from sidecar.keys.material import KeyMaterial
from sidecar.tokens.claims import TimeWindow
from sidecar.tokens.issuers import Issuer
from sidecar.tokens.model import VerifiedToken

__all__ = [
    "MAX_VERIFIED_HEADERS",
    "CachedVerification",
    "HeaderMemo",
    "VerifyCache",
    "entry_bytes",
    "sha256",
]

# Distinct headers remembered: one per (key, typ) in use, so a handful; bounded all the same.
MAX_VERIFIED_HEADERS = 64

# Per-entry bytes besides the token-proportional part: the digest key, the cache's links,
# the VerifiedToken and Claims objects and a small claims dict. Measured with tracemalloc by
# `python -m bench --cache-cost` (docs/performance.md); the estimate errs on the high side.
_ENTRY_OVERHEAD = 1600
# A decoded claims dict costs a few times its JSON size; tokens are ~3/4 claims by length.
_BYTES_PER_TOKEN_CHAR = 4


def entry_bytes(token_length: int) -> int:
    """The size charged to the byte bound for one cached token of this length."""
    return _ENTRY_OVERHEAD + _BYTES_PER_TOKEN_CHAR * token_length


class CachedVerification(NamedTuple):
    verified: VerifiedToken
    # exp, iat, nbf as sent, for the time window checked on every hit.
    window: TimeWindow
    # The key that verified the signature, and whose it is (None: our own ring).
    key: KeyMaterial
    issuer: Issuer | None
    size: int
    # SHA-256 of the exact token text: a hit must match it, not only the lookup key.
    digest: bytes


def sha256(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class VerifyCache:
    """LRU of `CachedVerification` by `hash` of the token, confirmed by its SHA-256;
    `max_entries == 0` disables it. `key` is the lookup key function (tests pass one that
    collides on purpose)."""

    def __init__(
        self, *, max_entries: int, max_bytes: int, key: Callable[[str], int] = hash
    ) -> None:
        if max_entries < 0 or max_bytes < 0:
            raise ValueError("cache bounds must be non-negative")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.enabled = max_entries > 0 and max_bytes > 0
        self._key = key
        self._entries: OrderedDict[int, CachedVerification] = OrderedDict()
        self._seen: set[int] = set()
        # id() of every entry's VerifiedToken: unique while the entry holds the object.
        self._held: set[int] = set()
        self._bytes = 0
        self._lock = threading.Lock()
        # Counted by the verifier (an entry whose key changed is a miss): metrics.
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def current_bytes(self) -> int:
        return self._bytes

    def get(self, token: str) -> CachedVerification | None:
        """The entry for exactly this token text (made most recently used), or None; the
        verifier checks `entry.key` is still the key for its kid."""
        key = self._key(token)
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.digest != sha256(token):
            return None
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
        return entry

    def holds(self, verified: VerifiedToken) -> bool:
        """Whether this very result is an entry's (the response memo keeps only those: a
        result the cache does not hold never comes back, so memoising it is waste)."""
        return id(verified) in self._held

    def seen_before(self, token: str) -> bool:
        """True from a token's second verification on; the first only records its `hash`
        (call it for tokens that passed, so a sender of bad tokens cannot fill it)."""
        key = self._key(token)
        seen = self._seen
        if key in seen:
            return True
        # No lock: each set operation is atomic, and a race costs at most a lost sighting.
        if len(seen) >= self.max_entries:
            seen.clear()
        seen.add(key)
        return False

    def put(
        self,
        token: str,
        verified: VerifiedToken,
        key: KeyMaterial,
        *,
        issuer: Issuer | None,
        window: TimeWindow,
    ) -> None:
        size = entry_bytes(len(token))
        if not self.enabled or size > self.max_bytes:
            return
        lookup = self._key(token)
        entry = CachedVerification(verified, window, key, issuer, size, sha256(token))
        with self._lock:
            entries = self._entries
            self._forget(entries.pop(lookup, None))
            while entries and (
                len(entries) >= self.max_entries or self._bytes + size > self.max_bytes
            ):
                self._forget(entries.popitem(last=False)[1])
            entries[lookup] = entry
            self._bytes += size
            self._held.add(id(verified))
            self._seen.discard(lookup)

    def _forget(self, old: CachedVerification | None) -> None:
        """Account for an entry leaving (under the lock)."""
        if old is not None:
            self._bytes -= old.size
            self._held.discard(id(old.verified))

    def discard(self, token: str) -> None:
        with self._lock:
            self._forget(self._entries.pop(self._key(token), None))

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._seen.clear()
            self._held.clear()
            self._bytes = 0


class HeaderMemo(dict[bytes, Mapping[str, Any]]):
    """Verified headers by exact base64url segment (`jws.HeaderLookup`: the dict's own
    `get`, so a lookup costs what a dict lookup costs).

    A header enters only through `remember`, once a token carrying it passed the signature
    check, so unauthenticated senders cannot fill it; what it holds is what
    `jws.parse_compact` produced from those very bytes (a pure function of them), so
    reading it never skips a check that could fail.
    """

    def __init__(self, max_entries: int = MAX_VERIFIED_HEADERS) -> None:
        super().__init__()
        self.max_entries = max_entries

    def remember(self, segment: bytes, header: Mapping[str, Any]) -> None:
        """After the signature check: keep a freshly parsed header (a read-only view)."""
        if type(header) is not dict or self.max_entries <= 0:
            return  # it came from here already
        if len(self) >= self.max_entries:
            self.clear()
        self[segment] = MappingProxyType(header)
