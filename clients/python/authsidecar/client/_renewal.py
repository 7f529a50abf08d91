"""A cached access token, renewed before it expires, with one renewal in flight at a time.

The renewal deadline is computed from the grant's `expires_in` and a local monotonic clock
read *before* the renewal call, so it needs no JWT decoding and does not depend on this host's
wall clock agreeing with the sidecar's:

    renew_at = fetched_at + expires_in - min(skew_s, expires_in / 2)

Single flight: callers that find the token stale queue on one lock (`threading.Lock` /
`asyncio.Lock`); the first renews, the rest find a fresh token when they get the lock, so N
waiting callers cause exactly one renewal. If the renewal fails, that caller gets the error
and the next one in the queue tries again.

`invalidate(token)` marks the token stale only if it is still the cached one, so N calls
refused with the same old token cause one renewal, not N.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable

from authsidecar.client._models import TokenGrant

DEFAULT_SKEW_S = 30.0


class _Cache:
    """The token and its renewal deadline; callers hold their lock around every use."""

    def __init__(self, skew_s: float, now: Callable[[], float]) -> None:
        self.skew_s = skew_s
        self.now = now
        self.token: str | None = None
        self.renew_at = 0.0

    def fresh(self) -> str | None:
        if self.token is not None and self.now() < self.renew_at:
            return self.token
        return None

    def store(self, grant: TokenGrant, fetched_at: float) -> str:
        self.token = grant.access_token
        lifetime = float(grant.expires_in)
        self.renew_at = fetched_at + lifetime - min(self.skew_s, lifetime / 2)
        return grant.access_token

    def invalidate(self, token: str) -> None:
        if token == self.token:
            self.renew_at = float("-inf")


class RenewingTokenSource:
    """A `TokenSource` over any blocking `fetch` (Issue, Refresh, a token endpoint...)."""

    def __init__(
        self,
        fetch: Callable[[], TokenGrant],
        *,
        skew_s: float = DEFAULT_SKEW_S,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._cache = _Cache(skew_s, now)
        self._lock = threading.Lock()
        self.renewals = 0

    def token(self) -> str:
        with self._lock:
            cached = self._cache.fresh()
            if cached is not None:
                return cached
            fetched_at = self._cache.now()
            grant = self._fetch()
            self.renewals += 1
            return self._cache.store(grant, fetched_at)

    def invalidate(self, token: str) -> None:
        with self._lock:
            self._cache.invalidate(token)


class AsyncRenewingTokenSource:
    """An `AsyncTokenSource` over a coroutine `fetch`; the lock never blocks the loop."""

    def __init__(
        self,
        fetch: Callable[[], Awaitable[TokenGrant]],
        *,
        skew_s: float = DEFAULT_SKEW_S,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._cache = _Cache(skew_s, now)
        self._lock = asyncio.Lock()
        self.renewals = 0

    async def token(self) -> str:
        cached = self._cache.fresh()
        if cached is not None:  # the common case takes no lock at all
            return cached
        async with self._lock:
            cached = self._cache.fresh()
            if cached is not None:
                return cached
            fetched_at = self._cache.now()
            grant = await self._fetch()
            self.renewals += 1
            return self._cache.store(grant, fetched_at)

    def invalidate(self, token: str) -> None:
        # Safe without the lock: the loop runs one callback at a time.
        self._cache.invalidate(token)
