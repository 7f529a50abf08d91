"""The verifier's two memories (issue 7), bounded data structures with no policy of their own.

What may be stored, and what is checked again on every use, is decided in one place:
tokens/verifier.py (its docstring states the rules). This module only keeps things:

* `VerifyCache`: the outcome of a verification's time-independent part (parse, key,
  signature, the claim rules that depend on neither the clock nor the call) by SHA-256 of
  the exact token text, with the key that verified it and whose keys those were (ours or an
  external issuer's). LRU, bounded twice: by entries and by an estimate of their bytes
  (`entry_bytes`). Verify runs on the event loop thread, but the cache takes a lock anyway
  so a caller on another thread cannot corrupt it (uncontended, it costs ~0.1 µs).
* `HeaderMemo`: parsed headers by their exact base64url segment. All tokens of one key share
  a header, so decoding and strictly parsing it (~2 µs) is paid once per key, not per token.
  Entries are read-only views, as every caller shares them; emptied when full.

Both belong to one `Verifier` (no module-level state): two services in one process, or two
tests, never see each other's entries.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from cachetools import LRUCache

from sidecar.keys.material import KeyMaterial
from sidecar.tokens.claims import TimeWindow
from sidecar.tokens.issuers import Issuer
from sidecar.tokens.model import VerifiedToken

__all__ = ["MAX_VERIFIED_HEADERS", "CachedVerification", "HeaderMemo", "VerifyCache", "entry_bytes"]

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


@dataclass(frozen=True, slots=True)
class CachedVerification:
    verified: VerifiedToken
    # exp, iat, nbf as sent, for the time window checked on every hit.
    window: TimeWindow
    # The key that verified the signature, and whose it is (None: our own ring).
    key: KeyMaterial
    issuer: Issuer | None
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
        """The entry; the verifier checks `entry.key` is still the key for its kid."""
        with self._lock:
            return self._entries.get(digest)

    def count(self, *, hit: bool) -> None:
        """Record the caller's verdict (an entry whose key changed is a miss): metrics."""
        if hit:
            self.hits += 1
        else:
            self.misses += 1

    def put(
        self,
        digest: bytes,
        verified: VerifiedToken,
        key: KeyMaterial,
        length: int,
        *,
        issuer: Issuer | None,
        window: TimeWindow,
    ) -> None:
        size = entry_bytes(length)
        if not self.enabled or size > self.max_bytes:
            return
        entry = CachedVerification(verified, window, key, issuer, size)
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
