"""Issue 16, stop 20: a first load is staged (tokens/revocation_staging.py) and settled into
the buckets after the sidecar serves. Pinned here: lookups are exact while entries are staged
(no revoked triple missed, no other triple refused), every reader that needs settled buckets
settles first (`horizon`, `add`, `count_from`, `export`, iteration), settling in any slices
ends with each triple once and the later horizon, and a first load from a real store serves
before it is settled, then settles in a task of its own.
"""

from __future__ import annotations

import asyncio
from array import array
from pathlib import Path

import pytest

from sidecar.clock import SystemClock
from sidecar.store.base import Revocation, deadline_for
from sidecar.store.revocation_pages import PackedKeys
from sidecar.store.sqlite import SqliteTokenStore
from sidecar.tokens.revocation import RevocationMirror
from sidecar.tokens.revocation_set import RevocationSet
from sidecar.tokens.store_sync import StoreSync

NOW = 1_700_000_000


def _staged(n: int) -> tuple[RevocationSet, list[str]]:
    entries = RevocationSet()
    keys = [f"key-{i:06d}" for i in range(n)]
    for start in range(0, n, 500):
        page = [k.encode() for k in keys[start : start + 500]]
        entries.append_group("jti", "iss", page, [NOW + start] * len(page))
    return entries, keys


def test_staged_entries_answer_exactly_before_they_are_settled() -> None:
    entries, keys = _staged(20_000)
    assert not entries.settled and len(entries) == len(keys)
    for key in keys:
        assert entries.contains("jti", "iss", key)
    # Neighbours of held keys, another kind, another issuer: not revoked.
    for other in ("key-", "key-0", "key-0000001", "ey-000001", "key-020000", "KEY-000001"):
        assert not entries.contains("jti", "iss", other)
    assert not entries.contains("family", "iss", "key-000001")
    assert not entries.contains("jti", "other", "key-000001")
    assert not entries.settled  # lookups never settle


def test_packed_keys_are_staged_as_the_same_keys_in_a_list() -> None:
    keys = [b"a", b"", b"b c", "\u00fc".encode()]
    packed, listed = RevocationSet(), RevocationSet()
    packed.append_group("jti", "iss", PackedKeys(b"\xff".join(keys), len(keys)), [9, 8, 7, 6])
    listed.append_group("jti", "iss", keys, [9, 8, 7, 6])
    assert sorted(packed, key=repr) == sorted(listed, key=repr)
    with pytest.raises(ValueError):
        PackedKeys(b"a\xffb\xffc", 2)  # a key holding 0xFF cannot be packed


def test_readers_that_need_buckets_settle_first() -> None:
    entries, keys = _staged(5_000)
    entries.append_group("jti", "iss", [b"key-000007"], [NOW + 90_000])  # a scan's copy
    assert len(entries) == 5_001  # the copy counts until settled
    # `horizon` settles its stage: the later of the two horizons.
    assert entries.horizon("jti", "iss", "key-000007") == NOW + 90_000
    # `add` of a staged triple: not new, the horizon lengthened, no third copy.
    assert not entries.add("jti", "iss", "key-000008", NOW + 80_000)
    assert entries.horizon("jti", "iss", "key-000008") == NOW + 80_000
    assert entries.add("jti", "iss", "new", NOW + 1)
    # `count_from` settles the rest (the sync awaits that in slices; this is the fallback).
    assert entries.count_from(0) == 5_001 and entries.settled and len(entries) == 5_001
    assert entries.count_from((NOW + 80_000) // 60 * 60) == 2


def test_settling_in_any_order_of_slices_merges_copies_keeping_the_later_horizon() -> None:
    entries, keys = _staged(8_000)
    entries.append_group("jti", "iss", [k.encode() for k in keys[:100]], [NOW + 50_000] * 100)
    entries.append_group("jti", "iss", [k.encode() for k in keys[100:200]], [1] * 100)
    dropped = 0
    for start in (700, 3, 0, 512, 1000, 4, 100):  # overlapping, out of order, past the end
        dropped += entries.settle(start, start + 300)
    dropped += entries.settle(0, entries.buckets)
    assert dropped == 200 and entries.settled and len(entries) == len(keys)
    by_key = {r.key: r.expires_at for r in entries}
    assert len(by_key) == len(keys)
    assert all(by_key[k] == NOW + 50_000 for k in keys[:100])
    assert by_key[keys[150]] == NOW  # the copy's horizon was shorter: the first kept
    assert entries.count_from(0) == len(keys)
    assert entries.purge(NOW) == 400  # the rest of the first page (horizon NOW)
    assert len(entries) == len(keys) - 400 and not entries.contains("jti", "iss", keys[150])


def test_a_staged_set_exports_each_triple_once() -> None:
    entries, keys = _staged(3_000)
    entries.append_group("jti", "iss", [keys[0].encode()], [NOW + 7])
    records, horizons = entries.export(0, entries.buckets)
    assert entries.settled and records.count(b"\xff") == len(keys) == len(horizons) // 4


async def test_a_first_load_serves_before_it_is_settled_then_settles_in_a_task(
    tmp_path: Path,
) -> None:
    store = SqliteTokenStore(tmp_path / "state.db")
    await store.open()
    try:
        now = int(SystemClock().now())
        held = [Revocation("jti", "iss", f"k{i}", now + 600 + i) for i in range(5_000)]
        await store.restore(held, deadline_ms=deadline_for(now, 5))
        mirror = RevocationMirror()
        sync = StoreSync(store, mirror, SystemClock())
        await sync.reconcile()
        assert mirror.loaded and not mirror.settled and len(mirror) == len(held)
        assert all(mirror.is_revoked("iss", r.key, "") for r in held)
        sync.start_settling()
        sync.start_settling()  # once is enough; a second call starts nothing more
        await sync.settled()
        assert mirror.settled and len(mirror) == len(held)
        assert set(mirror) == set(held) and mirror.count_from(0) == len(held)
        await asyncio.sleep(0)
        await sync.reconcile()  # the incremental read: nothing lost, nothing changed
        assert (sync.restored, sync.full_reads, len(mirror)) == (0, 1, len(held))
    finally:
        await store.close()


def test_a_snapshot_staged_is_counted_without_settling_a_scan_staged_is_settled_first() -> None:
    """A snapshot holds each triple once, so its staged horizons are counted where they are
    (a restart's loss check does not wait for the settling); a scan's pages may hold copies,
    so counting them settles first."""
    scanned, keys = _staged(4_000)
    records, horizons = scanned.export(0, scanned.buckets)
    restored = RevocationSet()
    for _ in restored.load(scanned.issuers, records, array("I", horizons)):
        pass
    assert restored.counted and not restored.settled
    boundary = (NOW + 2_000) // 60 * 60
    assert restored.count_from(boundary) == scanned.count_from(boundary) == 2_000
    assert not restored.settled and restored.count_from(0) == len(keys)
    again, _ = _staged(1_000)
    again.append_group("jti", "iss", [b"key-000001"], [NOW + 5])
    assert not again.counted
    assert again.count_from(0) == 1_000 and again.settled and again.counted
