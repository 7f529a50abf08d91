"""Issue 13, finding 1: revocations survive a Redis that lost its data.

A private `redis-server` per test, restarted EMPTY (SIGKILL, nothing on disk to reload, same
port): what a Redis without persistence does on a restart, and what a failover to a replica
that never had the data looks like to a client. Real sidecar processes (tests/support/fleet.py)
with the poll at 60 s, so what they do after the restart they do on reconnecting.

What is guaranteed, and pinned here: every revocation still in force that some running sidecar
held when the data was lost is written back by it, refused at every sidecar all along, and
loaded by a sidecar started after the loss; refresh families are lost and their refresh tokens
refused (fail closed). Start-up reports how Redis persists.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis

from authsidecar.v1 import auth_pb2
from sidecar.clock import SystemClock
from sidecar.config import StoreSettings
from sidecar.store.base import Revocation, deadline_for
from sidecar.store.redis import RedisTokenStore
from sidecar.store.redis_connect import RedisConnector
from sidecar.store.redis_keys import KeyLayout, encode_member
from sidecar.tokens.revocation import RevocationMirror
from sidecar.tokens.store_sync import StoreSync
from tests.support.fleet import SidecarProcess, fleet, start_sidecar
from tests.support.fleet_calls import (
    POLL,
    REUSED,
    REVOKED,
    issue,
    outcome,
    refresh,
    until_refused,
    verify,
)
from tests.support.redis import RedisServer, revoked_count
from tests.support.sidecar import short_tmpdir

pytestmark = pytest.mark.redis

PREFIX = "durable"
LOST_LINE = "token store lost data"


def _store(url: str) -> RedisTokenStore:
    settings = StoreSettings.model_validate(
        {"backend": "redis", "redis_url": url, "redis_key_prefix": PREFIX, "redis_timeout_s": 5}
    )
    return RedisTokenStore(
        RedisConnector(settings.redis_options()), clock=SystemClock(), key_prefix=PREFIX
    )


def _revoked_count(url: str) -> int:
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        return revoked_count(client, PREFIX)
    finally:
        client.close()


@pytest.fixture
def private_redis(redis_server: RedisServer) -> RedisServer:
    """A private Redis configured as many are by default: nothing on disk (`--save ""`,
    `--appendonly no`); `restart_empty` kills it and starts it again with no data."""
    return redis_server


async def test_store_sync_writes_back_what_an_emptied_redis_lost(
    private_redis: RedisServer,
) -> None:
    store = _store(private_redis.url)
    mirror = RevocationMirror()
    sync = StoreSync(store, mirror, SystemClock())
    now = int(time.time())
    held = [
        Revocation("jti", "iss", "a", now + 600),
        Revocation("family", "iss", "f", now + 900),
        Revocation("jti", "iss", "gone-soon", now - 1),  # expired: never written back
    ]
    try:
        await sync.reconcile()
        first_epoch = sync.epoch
        for revocation in held:
            await store.revoke(revocation, deadline_ms=deadline_for(time.time(), 5))
            mirror.add(revocation)
        await sync.reconcile()
        assert (sync.restored, sync.epoch_changes) == (0, 0)

        private_redis.restart_empty()
        await sync.reconcile()  # the pooled connection died; the driver reconnects once
        assert sync.epoch != first_epoch and sync.epoch_changes == 1
        assert sync.restored == 2
        assert set(await store.revocations(now)) == set(held[:2])
        assert mirror.is_revoked("iss", "a", "") and mirror.is_revoked("iss", "x", "f")
        await sync.reconcile()  # nothing lost any more: nothing written, nothing counted
        assert (sync.restored, sync.epoch_changes) == (2, 1)
    finally:
        await store.close()


async def test_a_mirror_entry_the_store_lacks_is_kept_even_with_the_same_epoch(
    private_redis: RedisServer,
) -> None:
    """A partial loss (a replica that missed the last writes keeps the old epoch) is caught
    by comparing entries, not only by the epoch."""
    store = _store(private_redis.url)
    mirror = RevocationMirror()
    sync = StoreSync(store, mirror, SystemClock())
    now = int(time.time())
    try:
        await sync.reconcile()
        revocation = Revocation("jti", "iss", "missed", now + 600)
        await store.revoke(revocation, deadline_ms=deadline_for(time.time(), 5))
        mirror.add(revocation)
        client = redis.Redis.from_url(private_redis.url, socket_timeout=5)
        # The write a replica never got (the partition holding it; its feed entry stays).
        client.delete(KeyLayout(PREFIX).partition_of("missed").revoked)
        client.close()
        await sync.reconcile()
        assert (sync.epoch_changes, sync.restored) == (0, 1)
        assert await store.revocations(now) == [revocation]
    finally:
        await store.close()


async def test_a_partition_that_lost_writes_is_caught_though_another_grew_as_much(
    private_redis: RedisServer,
) -> None:
    """Issue 16: the loss check holds per partition. One shard loses its revocations (epoch
    and feed kept, as a promoted replica that missed writes) while another gains as many the
    mirror has not read (a write landing between the feed read and the count): the totals
    match, yet the loss is caught and every lost revocation written back."""
    store = _store(private_redis.url)
    mirror = RevocationMirror()
    sync = StoreSync(store, mirror, SystemClock())
    layout = KeyLayout(PREFIX)
    now = int(time.time())
    names = [f"k{i}" for i in range(400)]
    shard, other = layout.partition_of("k0"), layout.partition_of("k1")
    if other == shard:
        other = next(layout.partition_of(n) for n in names if layout.partition_of(n) != shard)
    in_shard = [n for n in names if layout.partition_of(n) == shard]
    lost = [Revocation("jti", "iss", n, now + 900) for n in in_shard]
    grown = [n for n in names if layout.partition_of(n) == other][: len(lost)]
    assert len(grown) == len(lost) >= 5
    client = redis.Redis.from_url(private_redis.url, socket_timeout=5)
    try:
        await sync.reconcile()
        for revocation in lost:
            await store.revoke(revocation, deadline_ms=deadline_for(time.time(), 5))
            mirror.add(revocation)
        await sync.reconcile()  # counts every partition
        assert (sync.epoch_changes, sync.restored) == (0, 0)
        client.delete(shard.revoked)
        client.zadd(other.revoked, {encode_member("jti", "iss", n): now + 900 for n in grown})
        assert await store.count_revocations(now) == len(lost)  # the totals match
        await sync.reconcile()
        assert (sync.epoch_changes, sync.restored) == (0, len(lost))
        held = set(await store.revocations(now))
        assert set(lost) <= held and len(held) == len(lost) + len(grown)
        await sync.reconcile()  # reported once: nothing more written back
        assert sync.restored == len(lost)
    finally:
        client.close()
        await store.close()


@pytest.mark.parametrize(
    ("extra_args", "mode"),
    [
        ((), "none"),
        (("--save", "3600 1"), "rdb"),
        (("--appendonly", "yes", "--appendfsync", "everysec"), "aof-everysec"),
        (("--appendonly", "yes", "--appendfsync", "always"), "aof-always"),
        (("--appendonly", "yes", "--appendfsync", "no"), "aof-no"),
        (("--rename-command", "CONFIG", ""), "unknown"),
    ],
)
async def test_persistence_is_read_from_redis(
    redis_server: RedisServer, extra_args: tuple[str, ...], mode: str
) -> None:
    """(`redis_server` makes this skip, or fail in CI, as every private-Redis test does when
    redis-server is missing; the servers measured here are started below.)"""
    with short_tmpdir() as workdir:
        server = RedisServer(workdir, persist=False, extra_args=extra_args)
        server.start()
        store = _store(server.url)
        try:
            assert await store.persistence() == mode
        finally:
            await store.close()
            server.kill()


async def test_start_up_warns_in_one_line_about_a_redis_without_persistence(
    private_redis: RedisServer,
) -> None:
    async with fleet(1, private_redis.url, PREFIX, **POLL) as f:
        banner_log = f.sidecars[0].log()
        warnings = [line for line in banner_log.splitlines() if "persistence=none" in line]
        assert len(warnings) == 1, banner_log
        assert "appendfsync everysec" in warnings[0]


async def _all_refused(sidecars: list[SidecarProcess], tokens: list[str]) -> list[Any]:
    wrong = []
    for sc in sidecars:
        for token in tokens:
            result = await verify(sc, token)
            if result != REVOKED:
                wrong.append((sc.tcp, result))
    return wrong


async def test_revocations_survive_redis_restarted_empty_at_every_sidecar(
    private_redis: RedisServer,
) -> None:
    url = private_redis.url
    async with fleet(2, url, PREFIX, TOKENS__REFRESH_GRACE_S="0", **POLL) as f:
        a, b = f.sidecars
        # Three kinds of revocation: two access tokens (revoked at A and at B) and a whole
        # family revoked for reuse (its access tokens die with it).
        one, two = await issue(a), await issue(b)
        await a.stub.Revoke(auth_pb2.RevokeRequest(token=one.access_token), timeout=5)
        await b.stub.Revoke(auth_pb2.RevokeRequest(token=two.access_token), timeout=5)
        stolen = await issue(a, refresh=True)
        rotated = await refresh(a, stolen.refresh_token)
        assert not isinstance(rotated, tuple), rotated
        assert await refresh(b, stolen.refresh_token) == REUSED
        revoked = [one.access_token, two.access_token, stolen.access_token, rotated.access_token]
        live = await issue(a, refresh=True)
        for sc in (a, b):
            for token in revoked:
                await until_refused(sc, token)
        assert _revoked_count(url) == 3

        wrong: list[Any] = []
        stop = asyncio.Event()

        async def watch() -> None:  # every revoked token, at both sidecars, all along
            while not stop.is_set():
                wrong.extend(await _all_refused([a, b], revoked))
                await asyncio.sleep(0.01)

        watcher = asyncio.create_task(watch())
        private_redis.restart_empty()
        deadline = time.monotonic() + 20
        while _revoked_count(url) < 3:  # written back by the running sidecars
            assert time.monotonic() < deadline, "revocations were not written back"
            await asyncio.sleep(0.05)
        stop.set()
        await watcher
        assert wrong == []

        # A sidecar started after the loss knows nothing but what the others wrote back.
        late_dir = f.root / "late"
        late_dir.mkdir()
        late = await start_sidecar(late_dir, f.env)
        try:
            assert await _all_refused([a, b, late], revoked) == []
            # Refresh families are gone with the data: their refresh tokens fail closed.
            assert await refresh(late, live.refresh_token) == REVOKED
            assert await refresh(a, live.refresh_token) == REVOKED
            assert not isinstance(await verify(late, live.access_token), tuple)  # not over-revoked
            fresh = await outcome(issue(late, refresh=True))  # the new store takes writes
            assert not isinstance(fresh, tuple), fresh
        finally:
            await late.stop()
        for sc in (a, b):
            lines = [line for line in sc.log().splitlines() if LOST_LINE in line]
            assert len(lines) == 1, sc.log()
