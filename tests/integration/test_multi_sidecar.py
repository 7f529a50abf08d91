"""Issue 3's proof: several sidecar processes on one Redis.

Every sidecar here is a real `python -m sidecar serve` process with its own data directory, the
same signing key, and `store.sync_interval_s = 60`, so anything that reaches a sidecar within
the test reached it by push (the revocation feed), never by the periodic poll.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import random
import signal
import statistics
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import redis

from authsidecar.v1 import auth_pb2
from sidecar.app import STORE_HEALTH_SERVICE
from tests.support.fleet import SidecarProcess, fleet, health_of
from tests.support.redis import (
    RedisServer,
    delete_prefix,
    key_pattern,
    revoked_count,
    unique_prefix,
)
from tests.support.sidecar import reason_of

pytestmark = pytest.mark.redis

SERVING, NOT_SERVING = 1, 2  # grpc.health.v1.HealthCheckResponse.ServingStatus
POLL = {"STORE__SYNC_INTERVAL_S": "60"}
UNAVAILABLE = (grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE")
REVOKED = (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_REVOKED")
REUSED = (grpc.StatusCode.UNAUTHENTICATED, "REFRESH_TOKEN_REUSED")


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    name = unique_prefix()
    yield name
    delete_prefix(redis_url, name)


def jti_of(token: str) -> str:
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return str(claims["jti"])


async def issue(sc: SidecarProcess, *, refresh: bool = False) -> auth_pb2.IssueResponse:
    request = auth_pb2.IssueRequest(subject="alice", audience=["svc"], refresh_token=refresh)
    return await sc.admin_stub.Issue(request, timeout=5)


async def outcome(call: Any) -> Any:
    """The reply, or (code, reason) of the failure."""
    try:
        return await call
    except grpc.aio.AioRpcError as error:
        return reason_of(error)


async def verify(sc: SidecarProcess, token: str) -> Any:
    return await outcome(sc.stub.Verify(auth_pb2.VerifyRequest(token=token), timeout=5))


async def refresh(sc: SidecarProcess, token: str) -> Any:
    return await outcome(sc.stub.Refresh(auth_pb2.RefreshRequest(refresh_token=token), timeout=5))


async def until_refused(sc: SidecarProcess, token: str, limit_s: float = 2.0) -> float:
    """Seconds until Verify at `sc` refuses `token` as revoked (fails the test past limit)."""
    start = time.perf_counter()
    while True:
        result = await verify(sc, token)
        elapsed = time.perf_counter() - start
        if result == REVOKED:
            return elapsed
        assert not isinstance(result, tuple), result
        assert elapsed < limit_s, f"not refused after {elapsed:.3f}s"
        await asyncio.sleep(0.001)


async def until_health(target: str, service: str, status: int, limit_s: float = 10.0) -> None:
    deadline = time.monotonic() + limit_s
    while await health_of(target, service) != status:
        assert time.monotonic() < deadline, f"{service!r} never became {status}"
        await asyncio.sleep(0.02)


async def test_concurrent_refreshes_across_sidecars_make_exactly_one_pair(
    redis_url: str, prefix: str
) -> None:
    async with fleet(3, redis_url, prefix, TOKENS__REFRESH_GRACE_S="0", **POLL) as f:
        grant = await issue(f.sidecars[0], refresh=True)
        results = await asyncio.gather(
            *(refresh(f.sidecars[i % 3], grant.refresh_token) for i in range(300))
        )
        winners = [r for r in results if not isinstance(r, tuple)]
        failures = collections.Counter(r for r in results if isinstance(r, tuple))
        assert len(winners) == 1, failures
        assert set(failures) <= {REUSED, REVOKED} and failures[REUSED] >= 1, failures
        # The reuse revoked the family: the winner's tokens are dead at every sidecar.
        for sc in f.sidecars:
            await until_refused(sc, winners[0].access_token)
            assert await refresh(sc, winners[0].refresh_token) == REVOKED


async def test_refresh_retries_within_grace_share_one_successor_then_reuse_kills(
    redis_url: str, prefix: str
) -> None:
    # A wide window, so a slow machine cannot push part of the burst past it; what happens
    # after the window is the contract suite's (fixed clock). Here reuse comes from a token
    # two rotations old, which no window covers.
    async with fleet(3, redis_url, prefix, TOKENS__REFRESH_GRACE_S="60", **POLL) as f:
        grant = await issue(f.sidecars[0], refresh=True)
        results = await asyncio.gather(
            *(refresh(f.sidecars[i % 3], grant.refresh_token) for i in range(300))
        )
        assert all(not isinstance(r, tuple) for r in results), collections.Counter(
            r for r in results if isinstance(r, tuple)
        )
        successors = {jti_of(r.refresh_token) for r in results}
        assert len(successors) == 1 and successors != {jti_of(grant.refresh_token)}
        newest = await refresh(f.sidecars[2], results[0].refresh_token)
        assert not isinstance(newest, tuple), newest
        assert await refresh(f.sidecars[1], grant.refresh_token) == REUSED
        for sc in f.sidecars:
            await until_refused(sc, newest.access_token)
            assert await refresh(sc, newest.refresh_token) == REVOKED


async def test_revoke_at_one_sidecar_is_refused_at_another_within_push_delay(
    redis_url: str, prefix: str
) -> None:
    async with fleet(2, redis_url, prefix, **POLL) as f:
        a, b = f.sidecars
        delays = []
        for _ in range(30):
            grant = await issue(a)
            assert not isinstance(await verify(b, grant.access_token), tuple)
            await a.stub.Revoke(auth_pb2.RevokeRequest(token=grant.access_token), timeout=5)
            delays.append(await until_refused(b, grant.access_token, limit_s=1.0))
        print(
            f"propagation over {len(delays)}: median {statistics.median(delays) * 1000:.1f} ms,"
            f" max {max(delays) * 1000:.1f} ms"
        )


def _kill_connections_of(url: str, pid: int | None) -> int:
    """CLIENT KILL every connection of sidecar process `pid`, or of every sidecar."""
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        killed = 0
        for info in client.client_list():
            name = str(info.get("name", ""))
            if name.startswith("authsidecar-") and (pid is None or name.endswith(f"-{pid}")):
                killed += int(client.client_kill_filter(_id=info["id"]))
        return killed
    finally:
        client.close()


async def test_sidecar_that_lost_its_connection_catches_up_on_reconnect(
    redis_url: str, prefix: str
) -> None:
    async with fleet(2, redis_url, prefix, **POLL) as f:
        a, b = f.sidecars
        grants = [await issue(a) for _ in range(3)]
        # B is frozen and its connections are cut, so it cannot see what A revokes next.
        b.proc.send_signal(signal.SIGSTOP)
        try:
            assert _kill_connections_of(redis_url, b.proc.pid) >= 1
            for grant in grants:
                await a.stub.Revoke(auth_pb2.RevokeRequest(token=grant.access_token), timeout=5)
        finally:
            b.proc.send_signal(signal.SIGCONT)
        for grant in grants:
            await until_refused(b, grant.access_token, limit_s=3.0)
        # And the push path works again after the reconnection.
        fresh = await issue(a)
        await a.stub.Revoke(auth_pb2.RevokeRequest(token=fresh.access_token), timeout=5)
        await until_refused(b, fresh.access_token, limit_s=1.0)


async def test_redis_down_degrades_verify_fails_refresh_and_recovers_without_loss(
    redis_server: RedisServer,
) -> None:
    async with fleet(2, redis_server.url, "down", **POLL) as f:
        a, b = f.sidecars
        live = await issue(a, refresh=True)
        revoked = await issue(a)
        await a.stub.Revoke(auth_pb2.RevokeRequest(token=revoked.access_token), timeout=5)
        await until_refused(b, revoked.access_token)
        wrong: list[Any] = []
        stop = asyncio.Event()

        async def load() -> None:  # Verify at B all along: before, during and after
            while not stop.is_set():
                ok, refused = await asyncio.gather(
                    verify(b, live.access_token), verify(b, revoked.access_token)
                )
                if isinstance(ok, tuple) or refused != REVOKED:
                    wrong.append((ok, refused))
                await asyncio.sleep(0.005)

        loader = asyncio.create_task(load())
        await asyncio.sleep(0.2)
        redis_server.stop()
        for sc in (a, b):
            await until_health(sc.tcp, STORE_HEALTH_SERVICE, NOT_SERVING)
            assert await health_of(sc.tcp, "") == SERVING  # degraded, still verifying
        assert await refresh(b, live.refresh_token) == UNAVAILABLE
        revoke = b.stub.Revoke(auth_pb2.RevokeRequest(token=live.access_token), timeout=5)
        assert await outcome(revoke) == UNAVAILABLE  # not done, and the client knows it
        assert await outcome(issue(a, refresh=True)) == UNAVAILABLE
        assert not isinstance(await outcome(issue(a)), tuple)  # needs no store

        redis_server.start()
        for sc in (a, b):
            await until_health(sc.tcp, STORE_HEALTH_SERVICE, SERVING)
        stop.set()
        await loader
        assert wrong == []
        rotated = await refresh(b, live.refresh_token)  # the family survived intact
        assert not isinstance(rotated, tuple), rotated
        assert await verify(a, revoked.access_token) == REVOKED  # no revocation lost
        await a.stub.Revoke(auth_pb2.RevokeRequest(token=rotated.access_token), timeout=5)
        await until_refused(b, rotated.access_token, limit_s=1.0)


async def test_sidecar_killed_mid_refresh_leaves_no_half_rotated_family(
    redis_url: str, prefix: str
) -> None:
    rng = random.Random()  # a random kill moment, not a secret
    async with fleet(1, redis_url, prefix, **POLL) as f:
        grant = await issue(f.sidecars[0], refresh=True)
        token = grant.refresh_token
        for round_ in range(2):
            sc = f.sidecars[0]
            chain: dict[str, Any] = {"token": token, "done": 0}

            async def rotate_forever(
                sc: SidecarProcess = sc, chain: dict[str, Any] = chain
            ) -> None:
                while True:
                    result = await refresh(sc, chain["token"])
                    if isinstance(result, tuple):
                        return  # the process died under the call
                    chain["token"], chain["done"] = result.refresh_token, chain["done"] + 1

            runner = asyncio.create_task(rotate_forever())
            # Kill only once rotations are flowing (progress, not a fixed delay: a loaded
            # machine may take longer than any guess for the first one), at a random moment.
            async with asyncio.timeout(60):
                while chain["done"] == 0 and not runner.done():
                    await asyncio.sleep(0.01)
            await asyncio.sleep(rng.uniform(0.0, 0.3))
            sc.proc.kill()  # SIGKILL, with a Refresh almost surely in flight
            assert await sc.proc.wait() == -signal.SIGKILL
            await runner
            assert chain["done"] > 0, f"round {round_}: no refresh completed"
            last_known = jti_of(chain["token"])
            client = redis.Redis.from_url(redis_url, decode_responses=True)
            try:
                keys = list(client.scan_iter(match=key_pattern(prefix, "fam:*")))
                assert len(keys) == 1
                family = client.hgetall(keys[0])
                assert revoked_count(client, prefix) == 0
            finally:
                client.close()
            # Old state (the in-flight rotation never ran) or new state (it ran whole and
            # only the reply was lost); never anything in between, never revoked.
            assert family["revoked"] == "0"
            assert last_known in (family["current_jti"], family["previous_jti"])
            # The client retries what it last got: rotated normally, or (the reply was lost)
            # the grace window hands it the recorded successor. The family lives on.
            restarted = await f.restart(0)
            result = await refresh(restarted, chain["token"])
            assert not isinstance(result, tuple), result
            if family["previous_jti"] == last_known:
                assert jti_of(result.refresh_token) == family["current_jti"]
            token = result.refresh_token
