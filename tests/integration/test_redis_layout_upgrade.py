"""Upgrading from the single-tag key layout (version 1) to the partitioned one (issue 16).

Families: a version-1 family moves to its partition the first time it is presented
(sidecar/store/redis_legacy.py): rotated there as usual, refused by version-1 sidecars from
then on, taken by exactly one sidecar when two race.

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
from sidecar.store.base import FamilyRecord, Revocation, RotateOutcome, Rotation
from sidecar.store.redis import TTL_MARGIN_S
from sidecar.store.redis_codec import family_fields
from sidecar.store.redis_keys import FAMILY_REVOCATION_FIELD, KeyLayout, encode_member
from sidecar.tokens.revocation import RevocationMirror
from sidecar.tokens.store_sync import StoreSync
from tests.contract.test_token_store import ISS, NOW, SUB, _family, redis_store
from tests.support.redis import delete_prefix, unique_prefix

pytestmark = pytest.mark.redis


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


def _deadline() -> int:
    return int((time.time() + 30) * 1000)


async def _v1_family(url: str, prefix: str, family: FamilyRecord) -> None:
    """What a version-1 sidecar's Issue with a refresh token wrote: the same script on the
    single-tag keys."""
    legacy = KeyLayout(prefix).legacy
    fields = family_fields(family)
    fields[FAMILY_REVOCATION_FIELD] = encode_member("family", family.issuer, family.family_id)
    args: list[str | int] = [_deadline(), 3600 + TTL_MARGIN_S, family.expires_at, family.family_id]
    for name, value in fields.items():
        args += [name, value]
    client = redis.asyncio.Redis.from_url(url, decode_responses=True)
    try:
        script = client.register_script(redis_scripts.CREATE_FAMILY)
        keys = [legacy.family(family.family_id), legacy.families]
        assert await script(keys=keys, args=args) == 1
    finally:
        await client.aclose()


async def _v1_rotate(url: str, prefix: str, family_id: str, presented: str) -> str:
    """A version-1 sidecar's Refresh: the version-1 rotate script on the single-tag keys."""
    legacy = KeyLayout(prefix).legacy
    args: list[str | int] = [
        _deadline(), presented, "v1-next", NOW, 0, TTL_MARGIN_S, 10_000, 86_400, SUB, ISS, "", 0
    ]  # fmt: skip
    client = redis.asyncio.Redis.from_url(url, decode_responses=True)
    try:
        script = client.register_script(redis_scripts.ROTATE)
        reply = await script(
            keys=[legacy.family(family_id), legacy.revoked, legacy.feed], args=args
        )
        return str(reply[0])
    finally:
        await client.aclose()


def _rotation(presented: str, next_jti: str, grace_s: int = 0) -> Rotation:
    return Rotation(
        family_id="fam-1", presented_jti=presented, next_jti=next_jti, now=NOW,
        deadline_ms=_deadline(), subject=SUB, issuer=ISS, grace_s=grace_s,
    )  # fmt: skip


async def test_a_single_tag_family_moves_to_its_partition_when_first_presented(
    redis_url: str,
) -> None:
    prefix = unique_prefix()
    await _v1_family(redis_url, prefix, _family())
    store = redis_store(redis_url, prefix)
    try:
        assert await store.get_family("fam-1") == _family()  # read where it is, not moved
        rotated = await store.rotate(_rotation("j0", "j1"))
        assert rotated.outcome is RotateOutcome.ROTATED
        assert rotated.family is not None and rotated.family.current_jti == "j1"
        # Now it lives in its partition only: version 1 refuses it (fail closed), never
        # rotates it a second time.
        assert await _v1_rotate(redis_url, prefix, "fam-1", "j1") == "revoked"
        moved = await store.get_family("fam-1")
        assert moved is not None and (moved.current_jti, moved.previous_jti) == ("j1", "j0")
        assert not moved.revoked
        reused = await store.rotate(_rotation("j0", "j2"))  # grace 0: reuse, as ever
        assert reused.outcome is RotateOutcome.REUSED and reused.revocation is not None
    finally:
        await store.close()
        delete_prefix(redis_url, prefix)


async def test_a_revoked_single_tag_family_stays_revoked_when_moved(redis_url: str) -> None:
    prefix = unique_prefix()
    await _v1_family(redis_url, prefix, _family())
    assert await _v1_rotate(redis_url, prefix, "fam-1", "stolen") == "reused"
    store = redis_store(redis_url, prefix)
    try:
        result = await store.rotate(_rotation("j0", "j1"))
        assert result.outcome is RotateOutcome.REVOKED
    finally:
        await store.close()
        delete_prefix(redis_url, prefix)


async def test_two_sidecars_racing_to_move_one_family_make_one_rotation(redis_url: str) -> None:
    prefix = unique_prefix()
    await _v1_family(redis_url, prefix, _family())
    stores = [redis_store(redis_url, prefix) for _ in range(2)]
    try:
        results = await asyncio.gather(
            *(s.rotate(_rotation("j0", f"next-{i}", grace_s=60)) for i, s in enumerate(stores))
        )
        outcomes = sorted(r.outcome.value for r in results)
        assert outcomes == ["grace", "rotated"], outcomes
        successors = {r.family.current_jti for r in results if r.family is not None}
        assert len(successors) == 1
    finally:
        for s in stores:
            await s.close()
        delete_prefix(redis_url, prefix)
