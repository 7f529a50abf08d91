"""Issue 16, stop 20: the horizon counts of a first load are built after the sidecar serves
(tokens/revocation_staging.py), yet the loss check (`StoreSync._intact`, which compares them
with the store's count) still notices a Redis that lost writes: it waits for the settling.
A real Redis per test; the loss is a partition deleted with epoch and feed kept (a promoted
replica that missed writes), before anything has settled the first load. The horizons lie
where only that check looks (from the first minute boundary past the clock-skew margin, before
the next one, where the per-partition check of `revocations_since` starts counting), so it
alone must catch the loss.
"""

from __future__ import annotations

import time

import pytest
import redis

from sidecar.clock import SystemClock
from sidecar.store.base import Revocation, deadline_for
from sidecar.store.redis_keys import KeyLayout
from sidecar.tokens.revocation import RevocationMirror
from sidecar.tokens.store_sync import StoreSync
from tests.integration.test_store_durability import PREFIX, _store
from tests.support.redis import RedisServer

pytestmark = pytest.mark.redis


async def test_a_loss_right_after_a_first_load_is_caught_though_counts_come_late(
    redis_server: RedisServer,
) -> None:
    store = _store(redis_server.url)
    layout = KeyLayout(PREFIX)
    if time.time() % 60 > 50:  # keep the reconciliations inside this minute
        time.sleep(61 - time.time() % 60)
    now = int(time.time())
    minute = -(-now // 60) * 60
    # Counted by `_intact` (from minute + 60), not by the per-partition floors (minute + 120).
    held = [Revocation("jti", "iss", f"k{i}", minute + 90) for i in range(5_000)]
    client = redis.Redis.from_url(redis_server.url, socket_timeout=5)
    try:
        await store.restore(held, deadline_ms=deadline_for(time.time(), 5))
        mirror = RevocationMirror()
        sync = StoreSync(store, mirror, SystemClock())
        await sync.reconcile()  # the first load: pages staged, nothing counted yet
        assert mirror.loaded and not mirror.settled and len(mirror) == len(held)
        assert all(mirror.is_revoked("iss", r.key, "") for r in held)
        lost_part = layout.partition_of("k0")
        lost = [r for r in held if layout.partition_of(r.key) == lost_part]
        assert lost
        client.delete(lost_part.revoked)
        await sync.reconcile()  # waits for the settling, counts, finds fewer: writes back
        assert (sync.epoch_changes, sync.restored) == (0, len(lost))
        assert mirror.settled
        assert set(await store.revocations(now)) == set(held)
        await sync.reconcile()  # reported once
        assert sync.restored == len(lost)
    finally:
        client.close()
        await store.close()
