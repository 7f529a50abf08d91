"""A fake of our own `ExternalKeys` protocol (tokens/issuers.py) for domain tests.

`keys.remote.RemoteKeySet` is the real one, tested over real HTTPS in
tests/integration/test_external_issuers.py; this one is a key set the test holds and may
swap (`ring`), with no network and no refetch, so unit tests can configure external issuers.
"""

from __future__ import annotations

import asyncio

from sidecar.keys.material import KeyMaterial
from sidecar.keys.ring import KeyRing

__all__ = ["FixedExternalKeys"]


class FixedExternalKeys:
    """An external issuer's key set that never fetches: `get` reads `ring`."""

    def __init__(self, ring: KeyRing) -> None:
        self.ring = ring

    def get(self, kid: str) -> KeyMaterial | None:
        return self.ring.get(kid)

    def request_refetch(self, kid: str) -> asyncio.Task[bool] | None:
        return None

    async def refetch(self, kid: str) -> bool:
        return False
