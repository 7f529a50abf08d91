"""Issue 16's proofs on real Redis topologies: a Sentinel failover and a Cluster slot
migration and primary loss, each under Verify + Refresh + Revoke load from two sidecars.

What every test here checks (`Load`, `Load.check_after`):

* no acknowledged revocation is lost: every token whose Revoke answered OK is refused as
  revoked at every sidecar after the switch (the sidecars never drop a revocation the store
  lacks and write it back on their next reconciliation: issue 13);
* at most one winner per refresh token: each refresh token is presented by four racing
  clients (two per sidecar) inside a wide grace window, so every successful answer for one
  presented token must carry the same successor (two successors would be two rotations);
* nothing wrong is answered: Verify of a live token always succeeds (store.on_unavailable
  degrade), a token revoked before the load is always refused, and Refresh and Revoke answer
  either their right answer or UNAVAILABLE, never REFRESH_TOKEN_REUSED or anything else;
* progress: the load gets refreshes and revocations through before and after the switch.

Recovery time (the switch to the first successful Refresh) is printed, never asserted.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import json
import os
import re
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from authsidecar.v1 import auth_pb2
from sidecar.store.redis_keys import KeyLayout
from tests.integration.test_multi_sidecar import (
    POLL,
    REUSED,
    REVOKED,
    UNAVAILABLE,
    issue,
    jti_of,
    outcome,
    refresh,
    until_refused,
    verify,
)
from tests.support.fleet import Fleet, fleet, start_sidecar
from tests.support.redis import key_pattern, unique_prefix
from tests.support.redis_topologies import RedisClusterSet, SentinelSet, repl_offset, wait_until
from tests.support.sidecar import short_tmpdir
from tests.support.tcp_proxy import TcpProxy, tcp_proxy

pytestmark = pytest.mark.redis
if shutil.which("redis-server") is None and os.environ.get("AUTHSIDECAR_REQUIRE_REDIS") != "1":
    # As tests/conftest.py does for every Redis test: skip locally, fail in CI.
    pytest.skip("redis-server is not on PATH", allow_module_level=True)

RACERS = 4
# Wide enough that a slow switch never pushes a racer past it (then REUSED would be right).
GRACE = {"TOKENS__REFRESH_GRACE_S": "120"}
# How long a sidecar may take to refuse an acknowledged revocation after the switch: the
# feed's reconnection or the next poll (store.sync_interval_s, default 5 s) reconciles.
CONVERGE_S = 30.0


class Load:
    """Verify, Refresh and Revoke against every sidecar of `f` until `stop()`."""

    def __init__(self, f: Fleet, *, chains: int = 2) -> None:
        self.sidecars = f.sidecars
        self.chains = chains
        self.wrong: list[tuple[str, Any]] = []
        self.acked: list[tuple[float, str]] = []  # (when, access token) Revoke said OK
        self.successors: dict[str, set[str]] = collections.defaultdict(set)
        # (presented, answered) of every round that rotated.
        self.refreshed_at: list[tuple[float, float]] = []
        self.unavailable: collections.Counter[str] = collections.Counter()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        a = self.sidecars[0]
        self.live = await issue(a)
        self.revoked = await issue(a)
        await a.stub.Revoke(auth_pb2.RevokeRequest(token=self.revoked.access_token), timeout=5)
        for sc in self.sidecars:
            await until_refused(sc, self.revoked.access_token)
        chains = [await issue(a, refresh=True) for _ in range(self.chains)]
        self._tasks = [
            asyncio.create_task(self._verify()),
            asyncio.create_task(self._revoke()),
            *(asyncio.create_task(self._refresh(grant.refresh_token)) for grant in chains),
        ]

    async def stop(self) -> None:
        """Idempotent; a load task that crashed is recorded as a wrong answer."""
        self._stop.set()
        tasks, self._tasks = self._tasks, []
        for failure in await asyncio.gather(*tasks, return_exceptions=True):
            if failure is not None:
                self._bad("load task crashed", repr(failure))

    def _bad(self, what: str, answer: Any) -> None:
        self.wrong.append((what, answer))

    async def _verify(self) -> None:
        while not self._stop.is_set():
            for sc in self.sidecars:
                ok = await verify(sc, self.live.access_token)
                if isinstance(ok, tuple):
                    self._bad("verify live", ok)
                refused = await verify(sc, self.revoked.access_token)
                if refused != REVOKED:
                    self._bad("verify revoked", refused)
            await asyncio.sleep(0.01)

    async def _revoke(self) -> None:
        turn = 0
        while not self._stop.is_set():
            turn += 1
            sc = self.sidecars[turn % len(self.sidecars)]
            grant = await issue(self.sidecars[(turn + 1) % len(self.sidecars)])  # no store
            answer = await outcome(
                sc.stub.Revoke(auth_pb2.RevokeRequest(token=grant.access_token), timeout=5)
            )
            if answer == UNAVAILABLE:
                self.unavailable["revoke"] += 1
            elif isinstance(answer, tuple):
                self._bad("revoke", answer)
            else:
                self.acked.append((time.monotonic(), grant.access_token))
            await asyncio.sleep(0.01)

    async def _refresh(self, token: str) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            presenters = [self.sidecars[i % len(self.sidecars)] for i in range(RACERS)]
            answers = await asyncio.gather(*(refresh(sc, token) for sc in presenters))
            winners = [a for a in answers if not isinstance(a, tuple)]
            for answer in answers:
                if answer == UNAVAILABLE:
                    self.unavailable["refresh"] += 1
                elif isinstance(answer, tuple):
                    self._bad("refresh", answer)
            for winner in winners:
                self.successors[jti_of(token)].add(jti_of(winner.refresh_token))
            if winners:
                self.refreshed_at.append((started, time.monotonic()))
                token = winners[0].refresh_token
            else:
                await asyncio.sleep(0.02)

    def recovery_s(self, since: float) -> float:
        """From `since` to the first successful Refresh presented after it."""
        after = [answered for presented, answered in self.refreshed_at if presented > since]
        assert after, "no Refresh succeeded after the switch"
        return min(after) - since

    async def check_after(self, switched_at: float) -> None:
        """The invariants of the module docstring; call after `stop()`."""
        logs = "\n".join(_unusual(sc.log()) for sc in self.sidecars)
        assert self.wrong == [], f"{self.wrong[:10]}\n{logs}"
        two_winners = {jti: s for jti, s in self.successors.items() if len(s) > 1}
        assert two_winners == {}, two_winners
        assert any(t < switched_at for t, _ in self.acked), "no revocation before the switch"
        assert any(t > switched_at for t, _ in self.acked), "no revocation after the switch"
        assert any(t < switched_at for t, _ in self.refreshed_at), "no refresh before the switch"
        for _, token in self.acked:
            for sc in self.sidecars:
                await until_refused(sc, token, limit_s=CONVERGE_S)
        # The push path and Refresh work at every sidecar after the switch.
        a, b = self.sidecars
        fresh = await _until_available(lambda: outcome(issue(a, refresh=True)))
        rotated = await _until_available(lambda: refresh(b, fresh.refresh_token))
        await b.stub.Revoke(auth_pb2.RevokeRequest(token=rotated.access_token), timeout=5)
        await until_refused(a, rotated.access_token, limit_s=CONVERGE_S)

    def store_errors(self) -> collections.Counter[str]:
        """The driver errors the sidecars logged (one line per failed store call)."""
        found: collections.Counter[str] = collections.Counter()
        for sc in self.sidecars:
            found.update(re.findall(r"call failed: (\w+)", sc.log()))
        return found

    def report(self, label: str, switched_at: float) -> str:
        line = (
            f"{label}: recovery (switch -> first successful Refresh) "
            f"{self.recovery_s(switched_at):.2f} s; {len(self.acked)} revocations acked, "
            f"{len(self.successors)} refresh tokens rotated, unavailable {dict(self.unavailable)}"
            f"; store errors logged so far {dict(self.store_errors())}"
        )
        print(line)
        return line


async def _until_available(call: Callable[[], Awaitable[Any]]) -> Any:
    """The first answer of `call()` that is not UNAVAILABLE (a replica may still be
    resynchronising after the switch); any other failure fails the test."""
    deadline = time.monotonic() + CONVERGE_S
    while (answer := await call()) == UNAVAILABLE:
        assert time.monotonic() < deadline, "still UNAVAILABLE"
        await asyncio.sleep(0.1)
    assert not isinstance(answer, tuple), answer
    return answer


def _unusual(log: str) -> str:
    """A sidecar's log without the expected one-line warnings of an unreachable store."""
    kept = [line for line in log.splitlines() if "call failed" not in line]
    return "\n".join(kept[-80:])


@contextlib.asynccontextmanager
async def running(f: Fleet, *, chains: int = 2) -> AsyncIterator[Load]:
    """A started `Load`, stopped on the way out whatever happened."""
    load = Load(f, chains=chains)
    await load.start()
    try:
        yield load
    finally:
        await load.stop()


# --- Sentinel ---------------------------------------------------------------------------------


@pytest.fixture
def sentinel_set() -> Iterator[SentinelSet]:
    """A private Sentinel deployment per test: the test fails it over."""
    with short_tmpdir() as workdir:
        deployment = SentinelSet(workdir)
        try:
            deployment.start()
            yield deployment
        finally:
            deployment.stop()


def _sentinel_settings(deployment: SentinelSet) -> dict[str, str]:
    return {
        "STORE__REDIS_MODE": "sentinel",
        "STORE__REDIS_SENTINELS": deployment.sentinels,
        "STORE__REDIS_SENTINEL_MASTER": deployment.master_name,
        **GRACE,
    }


@pytest.mark.parametrize("how", ["sentinel-failover", "kill-9"])
async def test_sentinel_failover_under_load_loses_no_revocation_and_answers_nothing_wrong(
    sentinel_set: SentinelSet, how: str
) -> None:
    settings = _sentinel_settings(sentinel_set)
    if how == "sentinel-failover":
        # Sentinel promotes the replica before it demotes the old primary, and what that one
        # acknowledges in between is discarded: without WAIT a rotation can be lost and its
        # successor later refused as reuse (seen under load). After a kill -9 no replica is
        # left, so WAIT 1 would refuse every rotation: that variant runs without it.
        settings["STORE__REDIS_WAIT_REPLICAS"] = "1"
    # The URL's host is ignored in sentinel mode (credentials and db only).
    async with fleet(2, "redis://127.0.0.1:1/0", "sentinel", **settings) as f, running(f) as load:
        await asyncio.sleep(1.0)
        old = sentinel_set.primary()
        switched_at = time.monotonic()
        if how == "kill-9":
            old.kill()
        else:
            sentinel_set.failover()
        new_port = await asyncio.to_thread(sentinel_set.wait_promoted, old.port)
        promoted_s = time.monotonic() - switched_at
        assert new_port != old.port
        await _until_refreshed_after(load, switched_at)
        await asyncio.sleep(1.0)  # load on the new primary too
        await load.stop()
        load.report(f"sentinel {how} (promoted after {promoted_s:.2f} s)", switched_at)
        await load.check_after(switched_at)


async def test_failover_to_a_replica_that_missed_acked_revocations_writes_them_back() -> None:
    """The Redis-side loss made deterministic: the replica replicates through a proxy that
    is cut, so revocations acknowledged by the primary never reach it; the primary is then
    killed and that replica promoted. Redis has lost acknowledged revocations; the sidecars
    still refuse them, write them back, and a sidecar started afterwards (which knows only
    the store) refuses them too."""
    with short_tmpdir() as workdir:
        deployment = SentinelSet(workdir)
        async with tcp_proxy("127.0.0.1", deployment.nodes[0].port) as link:
            deployment.route_replica_through(link.port)
            try:
                await asyncio.to_thread(deployment.start)
                await _lost_writes_are_written_back(deployment, link)
            finally:
                deployment.stop()


async def _lost_writes_are_written_back(deployment: SentinelSet, link: TcpProxy) -> None:
    primary, replica = deployment.nodes
    settings = _sentinel_settings(deployment)
    async with fleet(2, "redis://127.0.0.1:1/0", "sentinel", **settings) as f:
        a, b = f.sidecars
        kept = [await issue(a) for _ in range(3)]
        for grant in kept:
            await a.stub.Revoke(auth_pb2.RevokeRequest(token=grant.access_token), timeout=5)
        await asyncio.to_thread(
            wait_until,
            "replica caught up",
            lambda: repl_offset(replica.port) >= repl_offset(primary.port),
        )
        link.cut()
        lost = [await issue(a) for _ in range(3)]
        for grant in lost:  # acknowledged by the primary alone
            await a.stub.Revoke(auth_pb2.RevokeRequest(token=grant.access_token), timeout=5)
            await until_refused(b, grant.access_token)  # pushed to B by the feed
        assert repl_offset(replica.port) < repl_offset(primary.port)  # the replica missed them

        primary.kill()
        await asyncio.to_thread(deployment.wait_promoted, primary.port)
        for grant in kept + lost:
            for sc in (a, b):
                await until_refused(sc, grant.access_token, limit_s=CONVERGE_S)
        # A sidecar that never saw them learns them from the store: they were written back.
        newcomer_dir = f.root / "late"
        newcomer_dir.mkdir()
        newcomer = await start_sidecar(newcomer_dir, f.env)
        f.sidecars.append(newcomer)
        for grant in kept + lost:
            await until_refused(newcomer, grant.access_token, limit_s=CONVERGE_S)


async def _until_refreshed_after(load: Load, since: float, limit_s: float = 60.0) -> None:
    deadline = time.monotonic() + limit_s
    while not any(t > since for t, _ in load.refreshed_at):
        assert time.monotonic() < deadline, f"no Refresh succeeded, wrong: {load.wrong[:5]}"
        await asyncio.sleep(0.05)


# --- Cluster ----------------------------------------------------------------------------------


@pytest.fixture
def cluster_set() -> Iterator[RedisClusterSet]:
    """Three primaries, one replica each (six processes), private to the test."""
    with short_tmpdir() as workdir:
        deployment = RedisClusterSet(workdir)
        try:
            deployment.start()
            yield deployment
        finally:
            deployment.stop()


def _hot_family_slot(deployment: RedisClusterSet, prefix: str) -> int:
    """The slot of a refresh family the load rotates (its partition's tag): moving that
    slot moves a family under rotation, its partition's revocations and its feed."""
    for node in deployment.topology():
        if "master" not in node["flags"]:
            continue
        client: Any = redis.Redis(port=node["port"], socket_timeout=5)
        try:
            for key in client.scan_iter(match=key_pattern(prefix, "fam:*")):
                return key_slot(key)
        finally:
            client.close()
    raise LookupError("no refresh family in the cluster")


async def test_cluster_slot_migration_then_primary_loss_under_load_loses_nothing(
    cluster_set: RedisClusterSet,
) -> None:
    prefix = "cluster"
    settings = {"STORE__REDIS_MODE": "cluster", **GRACE}
    fleet_ = fleet(2, cluster_set.url, prefix, **settings)
    async with fleet_ as f, running(f, chains=6) as load:
        await asyncio.sleep(1.0)
        slot = _hot_family_slot(cluster_set, prefix)

        # 1. Move the slot of a family under rotation (its partition: the family, the
        # partition's revocations and feed) to another primary, two keys at a time, under load.
        source = cluster_set.owner_of(slot)
        target = next(
            n
            for n in cluster_set.topology()
            if "master" in n["flags"] and n["id"] != source["id"] and n["slots"]
        )
        migrated_at = time.monotonic()
        moved = await asyncio.to_thread(cluster_set.migrate_slot, slot, target, pause_s=0.2)
        assert moved > 0
        assert cluster_set.owner_of(slot)["id"] == target["id"]
        await _until_refreshed_after(load, time.monotonic())
        load.report(f"cluster slot migration ({moved} keys)", migrated_at)

        # 2. Kill the new owner; its replica is promoted (cluster-node-timeout 2 s).
        killed_at = time.monotonic()
        cluster_set.server(target["port"]).kill()

        def new_owner() -> dict[str, Any] | None:
            try:
                owner = cluster_set.owner_of(slot)
            except LookupError:
                return None  # the dead primary is marked failed, its replica not yet promoted
            return owner if owner["id"] != target["id"] else None

        promoted = await asyncio.to_thread(wait_until, "the replica promoted", new_owner, 60.0)
        promoted_s = time.monotonic() - killed_at
        assert promoted["port"] != target["port"]
        await _until_refreshed_after(load, killed_at)
        await asyncio.sleep(1.0)
        await load.stop()
        load.report(f"cluster primary kill -9 (promoted after {promoted_s:.2f} s)", killed_at)
        await load.check_after(killed_at)
        assert any(migrated_at < t < killed_at for t, _ in load.acked)


# --- Cluster, sharded (issue 16) ----------------------------------------------------------


def _claim(token: str, name: str) -> str:
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return str(claims[name])


def _primaries(url: str) -> dict[int, list[tuple[int, int]]]:
    """Port -> slot ranges of every primary serving slots, as the node at `url` sees it."""
    client: Any = redis.Redis.from_url(url, socket_timeout=5, decode_responses=True)
    try:
        text: str = client.execute_command("CLUSTER", "NODES")
    finally:
        client.close()
    found: dict[int, list[tuple[int, int]]] = {}
    for line in text.strip().splitlines():
        parts = line.split()
        spans = [s for s in parts[8:] if not s.startswith("[")]
        if "master" in parts[2] and spans:
            port = int(parts[1].split(":")[1].split("@")[0])
            found[port] = [(int(s.split("-")[0]), int(s.split("-")[-1])) for s in spans]
    return found


def _owner(primaries: dict[int, list[tuple[int, int]]], slot: int) -> int:
    return next(p for p, spans in primaries.items() if any(lo <= slot <= hi for lo, hi in spans))


def _held_per_primary(primaries: dict[int, list[tuple[int, int]]], prefix: str) -> dict[int, Any]:
    """Per primary: (family keys, revocations) of `prefix`, counted on that node itself."""
    found = {}
    for port in primaries:
        client: Any = redis.Redis(port=port, socket_timeout=5, decode_responses=True)
        try:
            families = len(list(client.scan_iter(match=key_pattern(prefix, "fam:*"))))
            revoked = sum(
                int(client.zcard(key))
                for key in client.scan_iter(match=key_pattern(prefix, "revoked"))
            )
        finally:
            client.close()
        found[port] = (families, revoked)
    return found


async def test_cluster_shards_keys_over_every_primary_and_pushes_each_shards_revocations(
    redis_cluster3_url: str,
) -> None:
    """The key layout shards (issue 16): families and revocations land on all three
    primaries, counted on each node, and a revocation written on any shard is pushed to the
    other sidecar through that shard's feed (polls every 60 s: the push must do it)."""
    prefix = unique_prefix()
    primaries = _primaries(redis_cluster3_url)
    assert len(primaries) == 3
    keys = KeyLayout(prefix)
    settings = {"STORE__REDIS_MODE": "cluster", **POLL}
    async with fleet(2, redis_cluster3_url, prefix, **settings) as f:
        a, b = f.sidecars
        grants = [await issue(a, refresh=True) for _ in range(24)]
        shards_reached = set()
        for n, grant in enumerate(grants):
            writer, reader = (a, b) if n % 2 else (b, a)
            await writer.stub.Revoke(auth_pb2.RevokeRequest(token=grant.access_token), timeout=5)
            await until_refused(reader, grant.access_token, limit_s=CONVERGE_S)
            shards_reached.add(
                _owner(primaries, keys.partition_of(jti_of(grant.access_token)).slot)
            )
        assert shards_reached == set(primaries)
        held = _held_per_primary(primaries, prefix)
        assert all(families > 0 and revoked > 0 for families, revoked in held.values()), held
        assert sum(families for families, _ in held.values()) == len(grants)
        assert sum(revoked for _, revoked in held.values()) == len(grants)
        # Every family lives where its partition's tag sends it.
        for grant in grants:
            family_id = _claim(grant.access_token, "sid")
            port = _owner(primaries, keys.partition_of(family_id).slot)
            client: Any = redis.Redis(port=port, socket_timeout=5)
            try:
                assert client.exists(keys.family(family_id)) == 1
            finally:
                client.close()


async def test_cluster_reuse_revokes_records_and_publishes_in_the_familys_own_shard(
    redis_cluster3_url: str,
) -> None:
    """A reused refresh token on a sharded Cluster: the rotate script marks the family
    revoked, records its revocation and appends the feed entry in one step on the family's
    shard (a script whose keys spanned two slots would fail CROSSSLOT instead), for families
    on every primary; the other sidecar refuses their access tokens by push alone."""
    prefix = unique_prefix()
    primaries = _primaries(redis_cluster3_url)
    keys = KeyLayout(prefix)
    settings = {"STORE__REDIS_MODE": "cluster", "TOKENS__REFRESH_GRACE_S": "0", **POLL}
    async with fleet(2, redis_cluster3_url, prefix, **settings) as f:
        a, b = f.sidecars
        by_shard: dict[int, auth_pb2.IssueResponse] = {}
        for _ in range(200):
            grant = await issue(a, refresh=True)
            shard = _owner(primaries, keys.partition_of(_claim(grant.access_token, "sid")).slot)
            by_shard.setdefault(shard, grant)
            if len(by_shard) == len(primaries):
                break
        assert set(by_shard) == set(primaries)
        for port, grant in by_shard.items():
            rotated = await refresh(a, grant.refresh_token)
            assert not isinstance(rotated, tuple), rotated
            assert await refresh(b, grant.refresh_token) == REUSED  # grace 0: reuse
            family_id = _claim(grant.access_token, "sid")
            part = keys.partition_of(family_id)
            client: Any = redis.Redis(port=port, socket_timeout=5, decode_responses=True)
            try:
                family = client.hgetall(part.family(family_id))
                horizon = client.zscore(part.revoked, family["revocation"])
                entries = client.xrange(part.feed)
            finally:
                client.close()
            assert family["revoked"] == "1"
            assert horizon is not None and horizon > int(family["expires_at"])
            assert {"r": family["revocation"], "e": str(int(horizon))} in [e for _, e in entries]
            for token in (grant.access_token, rotated.access_token):
                await until_refused(a, token, limit_s=CONVERGE_S)
                await until_refused(b, token, limit_s=CONVERGE_S)
