"""The revocation snapshot kept in Redis (issue 16): a new pod (an empty data directory)
loads the copy another sidecar left in the store, then the store's writes since it; any copy
it cannot vouch for is ignored and the full read runs; one writer per interval.

Each test runs `StoreSync` against a private redis-server and tells a load from the store's
snapshot (`shared.loads`, `loaded_from`) from a full read (`full_reads`)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis

from sidecar.clock import FixedClock, SystemClock
from sidecar.config import StoreSettings
from sidecar.store.base import Revocation, deadline_for
from sidecar.store.redis import RedisTokenStore
from sidecar.store.redis_connect import RedisConnector
from sidecar.store.redis_keys import KeyLayout
from sidecar.tokens import revocation_snapshot
from sidecar.tokens.revocation import RevocationMirror
from sidecar.tokens.revocation_snapshot_store import StoreSnapshotKeeper
from sidecar.tokens.store_sync import StoreSync
from tests.support.redis import RedisServer, unique_prefix
from tests.support.sidecar import running_sidecar, short_tmpdir

pytestmark = pytest.mark.redis

ISS = "https://issuer.example"
PREFIX = "snap"
SNAPSHOT_KEY = KeyLayout(PREFIX).snapshot_tag + ":data"


def _store(url: str) -> RedisTokenStore:
    settings = StoreSettings.model_validate(
        {"backend": "redis", "redis_url": url, "redis_key_prefix": PREFIX, "redis_timeout_s": 5}
    )
    return RedisTokenStore(
        RedisConnector(settings.redis_options()), clock=SystemClock(), key_prefix=PREFIX
    )


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisTokenStore]:
    opened = _store(redis_server.url)
    yield opened
    await opened.close()


@pytest.fixture
def raw(redis_server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(redis_server.url)


async def _revoke(store: RedisTokenStore, key: str) -> None:
    revocation = Revocation("jti", ISS, key, int(time.time()) + 600)
    await store.revoke(revocation, deadline_ms=deadline_for(time.time(), 5))


async def _start(store: RedisTokenStore, data: Path) -> tuple[StoreSync, RevocationMirror]:
    """A sidecar's start with data directory `data`: a fresh mirror, its first reconciliation."""
    mirror = RevocationMirror()
    sync = StoreSync(store, mirror, SystemClock())
    sync.use_snapshot(data / "revocations.snapshot", "redis")
    await sync.reconcile()
    return sync, mirror


def _shared(sync: StoreSync) -> StoreSnapshotKeeper:
    assert sync.shared is not None
    return sync.shared


async def _first_sidecar(store: RedisTokenStore, data: Path, keys: list[str]) -> StoreSync:
    """A sidecar that revokes `keys` and writes its snapshot (locally and in the store)."""
    for key in keys:
        await _revoke(store, key)
    sync, _ = await _start(store, data)
    assert sync.loaded_from == "store"
    assert await sync.save_snapshot()
    assert _shared(sync).written == 1
    return sync


async def test_a_new_pod_loads_the_stores_snapshot_then_what_was_written_after_it(
    store: RedisTokenStore, tmp_path: Path
) -> None:
    await _first_sidecar(store, tmp_path / "a", ["before-1", "before-2"])
    await _revoke(store, "after")  # written after the copy: read from the feed
    sync, mirror = await _start(store, tmp_path / "b")  # a new pod: empty data directory
    assert (_shared(sync).loads, sync.full_reads, sync.loaded_from) == (1, 0, "store snapshot")
    assert all(mirror.is_revoked(ISS, k, "") for k in ("before-1", "before-2", "after"))
    assert len(mirror) == 3 and mirror.loaded
    await _revoke(store, "later")  # incremental reads go on from there
    await sync.reconcile()
    assert mirror.is_revoked(ISS, "later", "") and sync.full_reads == 0


async def test_a_store_without_a_snapshot_starts_with_the_full_read(
    store: RedisTokenStore, tmp_path: Path
) -> None:
    await _revoke(store, "x")
    sync, mirror = await _start(store, tmp_path / "a")
    assert (_shared(sync).loads, sync.full_reads, sync.loaded_from) == (0, 1, "store")
    assert mirror.is_revoked(ISS, "x", "")


async def test_a_local_snapshot_is_preferred_to_the_stores(
    store: RedisTokenStore, tmp_path: Path
) -> None:
    await _first_sidecar(store, tmp_path / "a", ["x"])
    sync, mirror = await _start(store, tmp_path / "a")  # a restart: its own file
    assert (sync.loaded_from, _shared(sync).loads, sync.full_reads) == ("snapshot", 0, 0)
    assert mirror.is_revoked(ISS, "x", "")


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage"])
async def test_a_damaged_store_snapshot_is_ignored(
    store: RedisTokenStore, raw: redis.Redis, tmp_path: Path, damage: str
) -> None:
    await _first_sidecar(store, tmp_path / "a", ["a", "b"])
    data = raw.get(SNAPSHOT_KEY)
    assert isinstance(data, bytes)
    damaged = {
        "flip": data[:40] + bytes([data[40] ^ 1]) + data[41:],
        "truncate": data[: len(data) // 2],
        "garbage": b"\x00" * 4096,
    }[damage]
    raw.set(SNAPSHOT_KEY, damaged)
    sync, mirror = await _start(store, tmp_path / "b")
    assert (_shared(sync).loads, sync.full_reads, sync.loaded_from) == (0, 1, "store")
    assert mirror.is_revoked(ISS, "a", "") and mirror.is_revoked(ISS, "b", "")


def _forged(data: bytes, **changes: str) -> bytes:
    """The stored copy with header fields changed and a revocation the store never had."""
    held = revocation_snapshot.decode(data)
    mirror = RevocationMirror()
    for _ in mirror.load_snapshot(held):
        pass
    mirror.merge([("jti", ISS, "ghost", int(time.time()) + 600)])
    records, horizons = mirror.export(0, mirror.buckets)
    until = type(held.horizons)("I")
    until.frombytes(horizons)
    fields = {"store": held.store, "epoch": held.epoch, "cursor": held.cursor} | changes
    forged = revocation_snapshot.Snapshot(
        fields["store"], fields["epoch"], fields["cursor"], mirror.issuers, records, until
    )
    return b"".join(revocation_snapshot.encode(forged))


@pytest.mark.parametrize("field", ["epoch", "store"])
async def test_a_store_snapshot_of_another_epoch_or_store_is_ignored(
    store: RedisTokenStore, raw: redis.Redis, tmp_path: Path, field: str
) -> None:
    await _first_sidecar(store, tmp_path / "a", ["a"])
    data = raw.get(SNAPSHOT_KEY)
    assert isinstance(data, bytes)
    raw.set(SNAPSHOT_KEY, _forged(data, **{field: "other"}))
    sync, mirror = await _start(store, tmp_path / "b")
    assert (_shared(sync).loads, sync.full_reads, sync.loaded_from) == (0, 1, "store")
    assert mirror.is_revoked(ISS, "a", "") and not mirror.is_revoked(ISS, "ghost", "")


async def test_a_store_snapshot_whose_feed_was_trimmed_is_ignored(
    store: RedisTokenStore, raw: redis.Redis, tmp_path: Path
) -> None:
    await _first_sidecar(store, tmp_path / "a", [f"k{i}" for i in range(40)])
    await _revoke(store, "after")
    for part in KeyLayout(PREFIX).partitions:  # the feed can no longer vouch for the changes
        raw.xtrim(part.feed, maxlen=0)
    sync, mirror = await _start(store, tmp_path / "b")
    assert (_shared(sync).loads, sync.full_reads, sync.loaded_from) == (0, 1, "store")
    assert mirror.is_revoked(ISS, "after", "") and mirror.is_revoked(ISS, "k7", "")


async def test_a_store_snapshot_holding_more_than_the_store_is_ignored(
    store: RedisTokenStore, raw: redis.Redis, tmp_path: Path
) -> None:
    """The store lost entries but kept its epoch and feed (a replica promoted without the
    last writes): the intact check refuses the copy, and nothing lost is resurrected."""
    await _first_sidecar(store, tmp_path / "a", ["kept", "lost"])
    lost = KeyLayout(PREFIX).partition_of("lost").revoked
    assert raw.zrem(lost, "jti " + ISS.replace(":", "%3A").replace("/", "%2F") + " lost") == 1
    sync, mirror = await _start(store, tmp_path / "b")
    assert (_shared(sync).loads, sync.full_reads, sync.loaded_from) == (0, 1, "store")
    assert mirror.is_revoked(ISS, "kept", "") and not mirror.is_revoked(ISS, "lost", "")


async def test_only_one_sidecar_writes_the_store_snapshot_per_interval(
    store: RedisTokenStore, redis_server: RedisServer, tmp_path: Path
) -> None:
    first = await _first_sidecar(store, tmp_path / "a", ["x"])
    other_store = _store(redis_server.url)
    try:
        second, _ = await _start(other_store, tmp_path / "b")
        await _revoke(store, "y")
        await second.reconcile()  # its first poll after a full load: due, saved
        assert await second.save_snapshot()  # and at stop: its local file is written...
        assert _shared(second).written == 0 and _shared(second).skipped == 2  # not the store's
        await first.reconcile()
        assert await first.save_snapshot()  # the lease holder writes again (e.g. at stop)
        assert _shared(first).written == 2
    finally:
        await other_store.close()


async def test_a_store_that_fails_while_writing_never_fails_the_save(
    store: RedisTokenStore, redis_server: RedisServer, tmp_path: Path
) -> None:
    sync = await _first_sidecar(store, tmp_path / "a", ["x"])
    await _revoke(store, "y")
    await sync.reconcile()
    redis_server.kill()
    assert await sync.save_snapshot()  # the local file still written; the store's skipped
    assert _shared(sync).written == 1


async def test_a_cluster_keeps_and_serves_the_snapshot(
    redis_cluster_url: str, tmp_path: Path
) -> None:
    """Staging key, copy and lease share the snapshot's own hash tag: the publishing script
    (RENAME under the lease) runs on one slot."""
    prefix = unique_prefix()
    settings = StoreSettings.model_validate(
        {
            "backend": "redis",
            "redis_url": redis_cluster_url,
            "redis_key_prefix": prefix,
            "redis_mode": "cluster",
            "redis_timeout_s": 5,
        }
    )

    def opened() -> RedisTokenStore:
        connector = RedisConnector(settings.redis_options())
        return RedisTokenStore(connector, clock=SystemClock(), key_prefix=prefix)

    first, second = opened(), opened()
    try:
        await _first_sidecar(first, tmp_path / "a", ["c1", "c2"])
        await _revoke(first, "c3")
        sync, mirror = await _start(second, tmp_path / "b")
        assert (sync.loaded_from, sync.full_reads) == ("store snapshot", 0)
        assert all(mirror.is_revoked(ISS, k, "") for k in ("c1", "c2", "c3"))
    finally:
        await first.close()
        await second.close()


def _settings_store(server: RedisServer, **more: object) -> dict[str, object]:
    return {"backend": "redis", "redis_url": server.url, "redis_key_prefix": PREFIX, **more}


async def test_redis_snapshot_off_writes_no_copy_to_the_store(
    store: RedisTokenStore, raw: redis.Redis, redis_server: RedisServer
) -> None:
    """`store.redis_snapshot: false` on the real app: its snapshot goes to the local file
    only, never to `{p:snapshot}` (no copy, no lease)."""
    await _revoke(store, "x")
    off = _settings_store(redis_server, redis_snapshot=False)
    with short_tmpdir() as data:
        async with running_sidecar(data, clock=FixedClock(time.time()), store=off) as running:
            sync = running.app.service.store_sync
            assert (sync.shared, sync.loaded_from, sync.full_reads) == (None, "store", 1)
            assert await sync.save_snapshot()
            assert (data / "revocations.snapshot").is_file()  # the local file is unaffected
    assert raw.keys(KeyLayout(PREFIX).snapshot_tag + "*") == []


async def test_redis_snapshot_off_reads_the_store_in_full_although_a_copy_exists(
    store: RedisTokenStore, raw: redis.Redis, tmp_path: Path
) -> None:
    """A new pod with `store.redis_snapshot: false` (`shared=False`, app/start.py; the test
    above checks the setting reaches it) ignores the copy a pod with the default loads."""
    await _first_sidecar(store, tmp_path / "a", ["y"])  # a copy in the store, by a default pod
    assert raw.exists(SNAPSHOT_KEY)
    mirror = RevocationMirror()
    sync = StoreSync(store, mirror, SystemClock())
    sync.use_snapshot(tmp_path / "b" / "revocations.snapshot", "redis", shared=False)
    await sync.reconcile()
    assert (sync.shared, sync.loaded_from, sync.full_reads) == (None, "store", 1)
    assert mirror.is_revoked(ISS, "y", "")
