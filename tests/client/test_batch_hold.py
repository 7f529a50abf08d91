"""`hold_s` of the asyncio batcher: callers that waited are held so that more join them;
a lone caller never is. Against a real sidecar behind the counting proxy, whose `hold`
decides when the "sidecar" answers (tests/client/proxy.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from authsidecar.client import VerifiedClaims
from tests.client.batch_harness import Ask, Batching
from tests.client.proxy import sidecar_proxy
from tests.client.tokens import mint
from tests.support.sidecar import RunningSidecar


async def test_a_lone_caller_is_not_held(sidecar: RunningSidecar, socket_dir: Path) -> None:
    """A hold far longer than the test's timeout: callers alone each time still finish."""
    asks = [Ask(await mint(sidecar, sub=f"user-{i}"), "svc-b") for i in range(3)]
    batching = Batching(True, sidecar.unix_target, max_in_flight=1, hold_s=3600.0)
    async with asyncio.timeout(30):
        outcomes = [(await batching.verify_all([ask]))[0] for ask in asks]
    await batching.close()
    assert all(isinstance(o, VerifiedClaims) for o in outcomes)
    assert batching.counted.verifies == 3


async def test_callers_that_waited_are_held_and_later_ones_join_them(
    sidecar: RunningSidecar, socket_dir: Path
) -> None:
    asks = [Ask(await mint(sidecar, sub=f"user-{i}"), "svc-b") for i in range(4)]
    async with sidecar_proxy(sidecar.unix_target, socket_dir) as proxy:
        proxy.hold = asyncio.Event()
        batching = Batching(True, proxy.target, max_in_flight=1, hold_s=0.5)
        first = asyncio.ensure_future(batching.verify_all(asks[:1]))  # alone: sent at once
        async with asyncio.timeout(30):
            while proxy.attempts["Verify"] < 1:
                await asyncio.sleep(0.005)
        waited = asyncio.ensure_future(batching.verify_all(asks[1:3]))  # wait behind it
        await asyncio.sleep(0.05)
        proxy.hold.set()
        async with asyncio.timeout(30):
            answered = await first
            # The two that waited are held now; one arriving meanwhile joins them.
            late = await batching.verify_all(asks[3:])
            together = await waited
        await batching.close()
    assert all(isinstance(o, VerifiedClaims) for o in answered + together + late)
    assert batching.counted.verifies == 1
    assert batching.counted.batch_sizes == [3]
