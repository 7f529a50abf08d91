"""An optional local cache of Verify results, off unless a `VerifyCache` is passed.

Bounded three ways: `max_entries` (least recently used go first), `max_age_s` per entry, and
the token's own `exp`: an entry never outlives its token. Only successes are cached, keyed by
a SHA-256 of the token together with the audience and required scopes asked for.

Staleness, the price of the cache: a token revoked at the sidecar keeps being accepted by
this process for up to `max_age_s` seconds (default 5) after the revocation, because a cache
hit does not ask the sidecar. Keep `max_age_s` below what a revocation may take to bite.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from authsidecar.client.models import VerifiedClaims

if TYPE_CHECKING:
    from cachetools import TLRUCache

_Key = tuple[bytes, str, tuple[str, ...]]


class VerifyCache:
    """Thread-safe; shared by the sync and asyncio server interceptors alike."""

    def __init__(
        self,
        *,
        max_entries: int = 1024,
        max_age_s: float = 5.0,
        now: Callable[[], float] = time.time,
    ) -> None:
        """`now` must be the epoch clock (`exp` is epoch seconds)."""
        # Imported here so the library imports without cachetools when no cache is used.
        from cachetools import TLRUCache

        def expires(_key: _Key, claims: VerifiedClaims, at: float) -> float:
            return min(at + max_age_s, float(claims.exp))

        self._entries: TLRUCache[_Key, VerifiedClaims] = TLRUCache(
            maxsize=max_entries, ttu=expires, timer=now
        )
        self._lock = threading.Lock()
        self.hits = 0

    @staticmethod
    def _key(token: str, audience: str, scopes: Sequence[str]) -> _Key:
        return (hashlib.sha256(token.encode()).digest(), audience, tuple(sorted(scopes)))

    def get(self, token: str, audience: str, scopes: Sequence[str]) -> VerifiedClaims | None:
        with self._lock:
            claims = self._entries.get(self._key(token, audience, scopes))
            if claims is not None:
                self.hits += 1
            return claims

    def put(self, token: str, audience: str, scopes: Sequence[str], claims: VerifiedClaims) -> None:
        with self._lock:
            self._entries[self._key(token, audience, scopes)] = claims
