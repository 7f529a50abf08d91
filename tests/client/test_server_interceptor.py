"""The server interceptors' own guarantees: asyncio never blocks; an unreachable sidecar.

The decision cache and the watch stream have their own file: test_decision_cache.py.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from authsidecar.client import AuthPolicy, StaticTokenSource
from tests.client.harness import OK, call_b, service_b
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
    # One sidecar round trip: the default interceptor sends its misses as VerifyBatch.
    assert (outcome.code, slow.attempts["Verify"] + slow.attempts["VerifyBatch"]) == (OK, 1)
    assert finished - started >= 0.5
    # The loop served the ticker all through the slow verification: many ticks, no stall.
    assert len(during) >= 20
    assert max(b - a for a, b in zip(during, during[1:], strict=False)) < 0.2


@AIO
async def test_unreachable_sidecar_makes_protected_calls_unavailable(
    sidecar: RunningSidecar, socket_dir: Path, aio: bool
) -> None:
    import grpc

    token = await mint(sidecar)
    async with service_b(aio, f"unix:{socket_dir / 'gone.sock'}", POLICY) as b:
        outcome = await call_b(aio, b, StaticTokenSource(token), "Whoami")
    assert (outcome.code, outcome.reason) == (grpc.StatusCode.UNAVAILABLE, "")
