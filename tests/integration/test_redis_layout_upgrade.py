"""Upgrading from the single-tag key layout (version 1) to the partitioned one (issue 16).

A deployment that ran version-1 sidecars holds its revocations in `{prefix}:revoked` and
`{prefix}:feed`; a version-1 sidecar still running during a rolling upgrade keeps writing
there. Version 2 never writes those keys but reads them as one more partition: at every full
read, in every incremental read, in the push feed while the old stream exists, and in the
count that checks the store lost nothing. Here a version-1 write is the version-1 script
itself (`redis_scripts.REVOKE`, unchanged) run on the version-1 keys, on the shared Redis
under a unique prefix.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio

from sidecar.clock import SystemClock
from sidecar.store import redis_scripts
from sidecar.store.base import Revocation
from sidecar.store.redis_keys import KeyLayout, encode_member
from sidecar.tokens.revocation import RevocationMirror
from sidecar.tokens.store_sync import StoreSync
from tests.contract.test_token_store import redis_store
from tests.support.redis import delete_prefix, unique_prefix

pytestmark = pytest.mark.redis
ISS = "https://issuer.test"


async def _v1_revoke(url: str, prefix: str, revocation: Revocation) -> None:
    """What a version-1 sidecar's Revoke does: the same script on the single-tag keys."""
    legacy = KeyLayout(prefix).legacy
    client = redis.asyncio.Redis.from_url(url, decode_responses=True)
    try:
        script = client.register_script(redis_scripts.REVOKE)
        member = encode_member(revocation.kind, revocation.issuer, revocation.key)
        deadline = int((time.time() + 30) * 1000)
        args: list[str | int] = [deadline, 3600, 10_000, 86_400, member, revocation.expires_at, 0]
        assert await script(keys=[legacy.revoked, legacy.feed], args=args) == 1
    finally:
        await client.aclose()


async def test_revocations_of_the_single_tag_layout_are_read_after_an_upgrade(
    redis_url: str,
) -> None:
    prefix = unique_prefix()
    now = int(time.time())
    old = [Revocation("jti", ISS, f"old-{i}", now + 600) for i in range(5)]
    for revocation in old:
        await _v1_revoke(redis_url, prefix, revocation)
    store = redis_store(redis_url, prefix, now=now)
    mirror = RevocationMirror()
    sync = StoreSync(store, mirror, SystemClock())
    try:
        await sync.reconcile()  # the first full read: version 1's set included
        assert all(mirror.is_revoked(ISS, r.key, "") for r in old)
        assert set(old) <= set(await store.revocations(now))

        # A version-1 sidecar still running writes again: the incremental read gets it,
        # and the count that detects a loss includes the old set (no full read again).
        later = Revocation("jti", ISS, "old-later", now + 600)
        await _v1_revoke(redis_url, prefix, later)
        await sync.reconcile()
        assert mirror.is_revoked(ISS, "old-later", "")
        assert sync.full_reads == 1 and sync.restored == 0

        # The push feed follows the old stream too while it exists.
        feed = await store.open_revocation_feed()
        pushed = Revocation("jti", ISS, "old-pushed", now + 600)
        reader = feed.__aiter__()
        waiting = asyncio.ensure_future(anext(reader))
        await _v1_revoke(redis_url, prefix, pushed)
        assert await asyncio.wait_for(waiting, 10) == pushed
        await feed.close()

        # Version 2 never writes the old keys.
        await store.revoke(
            Revocation("jti", ISS, "new", now + 600), deadline_ms=int((time.time() + 30) * 1000)
        )
        raw = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
        try:
            assert await raw.zcard(KeyLayout(prefix).legacy.revoked) == len(old) + 2
        finally:
            await raw.aclose()
    finally:
        await store.close()
        delete_prefix(redis_url, prefix)
