"""The Redis store's first-load scan (`scan_revocation_groups`, sidecar/store/redis_grouped_scan.py)
answers what `scan_revocations` answers, also for what another writer may have left in a
partition's set: members of another shape, unknown kinds, non-integer scores, keys needing
percent-decoding, and the version-1 keys. Pages are split with bytes operations checked by
counting separators; this pins that nothing they let through differs from the row-by-row
decode, on pages of one prefix and of several. Shared Redis, unique prefix.
"""

from __future__ import annotations

import pytest
import redis.asyncio

from sidecar.store.base import Revocation
from sidecar.store.redis import RedisTokenStore
from sidecar.store.redis_keys import KeyLayout, encode_member
from tests.contract.test_token_store import ISS, NOW, _later, redis_store
from tests.support.redis import delete_prefix, unique_prefix

pytestmark = pytest.mark.redis


async def _rows(store: RedisTokenStore, limit: int) -> set[tuple[str, str, str, int]]:
    token, found = "", set[tuple[str, str, str, int]]()
    for _ in range(10_000):
        rows, token = await store.scan_revocations(token, NOW, limit)
        found.update(rows)
        if not token:
            return found
    raise AssertionError("scan_revocations never finished")


async def _grouped(store: RedisTokenStore, limit: int) -> set[tuple[str, str, str, int]]:
    token, found = "", set[tuple[str, str, str, int]]()
    for _ in range(10_000):
        groups, token = await store.scan_revocation_groups(token, NOW, limit)
        for kind, issuer, keys, untils in groups:
            found.update(
                (kind, issuer, key.decode("utf-8", "surrogatepass"), until)
                for key, until in zip(keys, untils, strict=True)
            )
        if not token:
            return found
    raise AssertionError("scan_revocation_groups never finished")


@pytest.mark.parametrize("limit", [7, 2_000])
async def test_grouped_scan_reads_what_the_row_scan_reads_whatever_the_members(
    redis_url: str, limit: int
) -> None:
    prefix = unique_prefix()
    store = redis_store(redis_url, prefix)
    raw = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    keys = KeyLayout(prefix)
    try:
        ours = [Revocation("jti", ISS, f"k{i}", NOW + 100 + i) for i in range(600)]
        ours += [Revocation("family", "iss two", f"f{i}", NOW + 50) for i in range(30)]
        ours += [Revocation("jti", ISS, key, NOW + 9) for key in ("%41", "ü", "a b", "")]
        await store.restore(ours, deadline_ms=_later())
        foreign = {
            "jti https%3A%2F%2Fi line\nbreak": NOW + 20,  # a key with a newline
            "jti https%3A%2F%2Fi": NOW + 20,  # two parts
            "jti a b c": NOW + 20,  # four parts
            "other https%3A%2F%2Fi k": NOW + 20,  # unknown kind
            " https%3A%2F%2Fi k": NOW + 20,  # empty kind
            "family  empty-issuer": NOW + 20,
            "jti x fraction": NOW + 20.75,  # truncated to NOW + 20
            "jti x barely": NOW + 0.5,  # truncated to NOW: not live
            "jti x dead": NOW - 1,
        }
        for part in (keys.partitions[3], keys.partitions[11], keys.legacy):
            await raw.zadd(part.revoked, foreign)
        await raw.zadd(keys.legacy.revoked, {encode_member("jti", ISS, "v1"): NOW + 30})
        expected = await _rows(store, limit)
        assert ("jti", "x", "fraction", NOW + 20) in expected
        assert ("jti", "https://i", "line\nbreak", NOW + 20) in expected
        assert ("jti", ISS, "v1", NOW + 30) in expected
        assert {(r.kind, r.issuer, r.key, r.expires_at) for r in ours} <= expected
        assert await _grouped(store, limit) == expected
    finally:
        await raw.aclose()
        await store.close()
        delete_prefix(redis_url, prefix)


async def test_a_grouped_scan_token_of_another_layout_is_refused(redis_url: str) -> None:
    prefix = unique_prefix()
    store = redis_store(redis_url, prefix)
    try:
        with pytest.raises(ValueError, match="not a scan token"):
            await store.scan_revocation_groups("0,0", NOW, 100)
    finally:
        await store.close()
        delete_prefix(redis_url, prefix)


@pytest.mark.parametrize(
    "odd",
    [
        [],  # one prefix throughout: the page is split in one step
        ["jti https%3A%2F%2Fi %41%20b", "jti https%3A%2F%2Fi %E2%82%AC"],  # keys to decode
        ["jti https%3A%2F%2Fi a\nb"],  # a newline in a key: split member by member
        ["jti https%3A%2F%2Fi a b"],  # four parts: dropped, as decode_row drops it
        ["jti https%3A%2F%2Fi\njti https%3A%2F%2Fi x"],  # a newline before the prefix
        ["jti https%3A%2F%2Fi "],  # an empty key
    ],
)
async def test_a_page_of_one_prefix_is_read_as_the_row_scan_reads_it(
    redis_url: str, odd: list[str]
) -> None:
    prefix = unique_prefix()
    store = redis_store(redis_url, prefix)
    raw = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    try:
        members = {f"jti https%3A%2F%2Fi k{i}": NOW + 10 + i for i in range(300)}
        members.update({member: NOW + 5 for member in odd})
        await raw.zadd(KeyLayout(prefix).partitions[5].revoked, members)
        expected = await _rows(store, 2_000)
        assert len(expected) >= 300
        assert await _grouped(store, 2_000) == expected
        assert await _grouped(store, 50) == expected
    finally:
        await raw.aclose()
        await store.close()
        delete_prefix(redis_url, prefix)
