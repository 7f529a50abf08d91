"""The server interceptors' own guarantees: asyncio never blocks; an unreachable sidecar.

The decision cache and the watch stream have their own file: test_decision_cache.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from authsidecar.client import AuthPolicy, StaticTokenSource
from tests.client.harness import OK, call_b, service_b
from tests.client.proxy import sidecar_proxy
from tests.client.tokens import mint
from tests.support.marks import AIO
from tests.support.sidecar import RunningSidecar

POLICY = AuthPolicy(audience="svc-b")


async def test_async_interceptor_keeps_the_event_loop_running_during_verify(
    sidecar: RunningSidecar, socket_dir: Path
) -> None:
    token = await mint(sidecar)
    turns_while_held = 0

    async def ticker(held: asyncio.Event) -> None:
        """Counts loop turns while the sidecar holds the Verify; releases it after 20. An
        interceptor that blocked the loop would starve this (and the proxy): no answer."""
        nonlocal turns_while_held
        while not held.is_set():
            if slow.attempts["Verify"] + slow.attempts["VerifyBatch"] >= 1:
                turns_while_held += 1
                if turns_while_held >= 20:
                    held.set()
            await asyncio.sleep(0.01)

    async with sidecar_proxy(sidecar.unix_target, socket_dir) as slow:
        slow.hold = asyncio.Event()  # the "sidecar" answers only when the ticker says so
        async with service_b(True, slow.target, POLICY) as b:
            task = asyncio.create_task(ticker(slow.hold))
            call = call_b(True, b, StaticTokenSource(token), "Whoami")
            outcome = await asyncio.wait_for(call, 60)
            await task
    # One sidecar round trip: the default interceptor sends its misses as VerifyBatch.
    assert (outcome.code, slow.attempts["Verify"] + slow.attempts["VerifyBatch"]) == (OK, 1)
    # The loop served the ticker all through the held verification.
    assert turns_while_held == 20


@AIO
async def test_unreachable_sidecar_makes_protected_calls_unavailable(
    sidecar: RunningSidecar, socket_dir: Path, aio: bool
) -> None:
    import grpc

    token = await mint(sidecar)
    async with service_b(aio, f"unix:{socket_dir / 'gone.sock'}", POLICY) as b:
        outcome = await call_b(aio, b, StaticTokenSource(token), "Whoami")
    assert (outcome.code, outcome.reason) == (grpc.StatusCode.UNAVAILABLE, "")
