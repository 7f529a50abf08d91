"""The server interceptors' own guarantees: asyncio never blocks, and the optional cache."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from authsidecar.client import AuthPolicy, StaticTokenSource, VerifyCache
from authsidecar.v1 import auth_pb2
from tests.client.harness import OK, UNAUTHENTICATED, call_b, service_b
from tests.client.proxy import sidecar_proxy
from tests.client.tokens import mint
from tests.support.sidecar import RunningSidecar

AIO = pytest.mark.parametrize("aio", [False, True], ids=["sync", "aio"])
POLICY = AuthPolicy(audience="svc-b")


async def test_async_interceptor_keeps_the_event_loop_running_during_verify(
    sidecar: RunningSidecar, socket_dir: Path
) -> None:
    token = await mint(sidecar)
    ticks: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    async with sidecar_proxy(sidecar.unix_target, socket_dir) as slow:
        slow.delay_s = 0.5  # every Verify takes half a second at the "sidecar"
        async with service_b(True, slow.target, POLICY) as b:
            task = asyncio.create_task(ticker())
            started = time.monotonic()
            outcome = await call_b(True, b, StaticTokenSource(token), "Whoami")
            finished = time.monotonic()
            stop.set()
            await task
    during = [t for t in ticks if started <= t <= finished]
    assert (outcome.code, slow.attempts["Verify"]) == (OK, 1)
    assert finished - started >= 0.5
    # The loop served the ticker all through the slow verification: many ticks, no stall.
    assert len(during) >= 20
    assert max(b - a for a, b in zip(during, during[1:], strict=False)) < 0.2


@AIO
async def test_cache_answers_repeat_calls_and_is_stale_about_revocation_for_max_age(
    sidecar: RunningSidecar, socket_dir: Path, aio: bool
) -> None:
    token = await mint(sidecar)
    cache = VerifyCache(max_age_s=5, now=sidecar.clock.now)
    source = StaticTokenSource(token)
    async with sidecar_proxy(sidecar.unix_target, socket_dir) as counted:
        async with service_b(aio, counted.target, POLICY, cache=cache) as b:
            first = await call_b(aio, b, source, "Whoami")
            second = await call_b(aio, b, source, "Whoami")
            assert counted.attempts["Verify"] == 1 and cache.hits == 1
            await sidecar.public.Revoke(auth_pb2.RevokeRequest(token=token))
            stale = await call_b(aio, b, source, "Whoami")  # the documented staleness
            sidecar.clock.advance(5)
            refused = await call_b(aio, b, source, "Whoami")
    assert [first.code, second.code, stale.code] == [OK, OK, OK]
    assert (refused.code, refused.reason) == (UNAUTHENTICATED, "TOKEN_REVOKED")
    # The refused call went to the sidecar twice: A's interceptor retries UNAUTHENTICATED once.
    assert counted.attempts["Verify"] == 3


@AIO
async def test_cache_entries_never_outlive_the_token(
    sidecar: RunningSidecar, socket_dir: Path, aio: bool
) -> None:
    token = await mint(sidecar, ttl_s=60)
    cache = VerifyCache(max_age_s=3600, now=sidecar.clock.now)
    source = StaticTokenSource(token)
    async with service_b(aio, sidecar.unix_target, POLICY, cache=cache) as b:
        assert (await call_b(aio, b, source, "Whoami")).code == OK
        sidecar.clock.advance(60 + sidecar.settings.tokens.leeway_s + 1)
        expired = await call_b(aio, b, source, "Whoami")
    assert (expired.code, expired.reason) == (UNAUTHENTICATED, "TOKEN_EXPIRED")


@AIO
async def test_unreachable_sidecar_makes_protected_calls_unavailable(
    sidecar: RunningSidecar, socket_dir: Path, aio: bool
) -> None:
    import grpc

    token = await mint(sidecar)
    async with service_b(aio, f"unix:{socket_dir / 'gone.sock'}", POLICY) as b:
        outcome = await call_b(aio, b, StaticTokenSource(token), "Whoami")
    assert (outcome.code, outcome.reason) == (grpc.StatusCode.UNAVAILABLE, "")
