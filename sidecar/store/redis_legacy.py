"""Refresh families of the single-tag key layout (version 1), moved on first use (issue 16).

A deployment upgraded from layout version 1 (`redis_keys`) still has its live families under
`{prefix}:fam:<id>`. They are not copied in bulk (a SCAN over a big Cluster at every start,
racing version-1 sidecars still rotating them): the first time one is presented to a
version-2 sidecar (`rotate` finds no such family in its partition), it is taken from the
version-1 keys (script TAKE_V1: read and marked revoked + migrated in one step, so exactly one
sidecar takes it and version-1 sidecars refuse it from then on) and re-created in its
partition (script ADOPT), then the rotation runs there as usual.

Between the two steps the family exists on neither side: a sidecar SIGKILLed there, or a
partition unreachable for ADOPT, loses it, and its refresh token is refused (fail closed; the
user signs in again). A second presenter racing the move waits briefly for ADOPT to land.
"""

from __future__ import annotations

import asyncio

from sidecar.errors import StoreDeadlineError
from sidecar.store import redis_scripts
from sidecar.store.base import FamilyRecord
from sidecar.store.redis_codec import family_from
from sidecar.store.redis_driver import Caller
from sidecar.store.redis_keys import KeyLayout

# How long a racing presenter waits for the move another sidecar is making.
_WAIT_STEPS = 5
_WAIT_STEP_S = 0.02


class LegacyFamilies:
    """Moves version-1 families into their partitions; see the module docstring."""

    def __init__(self, caller: Caller, keys: KeyLayout, *, margin_s: int) -> None:
        self._caller = caller
        self._keys = keys
        self._margin_s = margin_s
        self._take = caller.client.register_script(redis_scripts.TAKE_V1)
        self._adopt = caller.client.register_script(redis_scripts.ADOPT)

    async def move(self, family_id: str, *, now: int, deadline_ms: int) -> bool:
        """Whether the family may now be in its partition (moved here, or being moved by
        another sidecar, waited for); False when version 1 has no such family."""
        old = self._keys.legacy.family(family_id)
        taken: list[str] = await self._caller.call(self._take(keys=[old], args=[deadline_ms]))
        if taken[:1] == [redis_scripts.LATE]:
            raise StoreDeadlineError()
        if not taken:
            return await self._moved_elsewhere(family_id)
        fields = dict(zip(taken[0::2], taken[1::2], strict=True))
        fields.pop("migrated", None)
        expires_at = int(fields.get("expires_at") or 0)
        part = self._keys.partition_of(family_id)
        args: list[str | int] = [max(expires_at - now, 0) + self._margin_s, expires_at, family_id]
        for name, value in fields.items():
            args += [name, value]
        keys = [part.family(family_id), part.families, part.revoked]
        await self._caller.call(self._adopt(keys=keys, args=args))
        return True

    async def _moved_elsewhere(self, family_id: str) -> bool:
        """Version 1 has it no more (or never had it): True once it shows up here."""
        client = self._caller.client
        if not await self._caller.call(
            client.hexists(self._keys.legacy.family(family_id), "migrated")
        ):
            return False  # never a version-1 family
        new = self._keys.family(family_id)
        for _ in range(_WAIT_STEPS):
            if await self._caller.call(client.exists(new)):
                return True
            await asyncio.sleep(_WAIT_STEP_S)
        return False

    async def get(self, family_id: str) -> FamilyRecord | None:
        """A version-1 family not moved yet, read only (Introspect of its refresh token)."""
        fields: dict[str, str] = await self._caller.call(
            self._caller.client.hgetall(self._keys.legacy.family(family_id))  # type: ignore[arg-type]
        )
        if not fields or fields.get("migrated") == "1":
            return None
        return family_from(fields)
