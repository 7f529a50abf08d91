"""app/store.py: a cancel that a store call swallowed is still honoured by the follower and
the poll (Python 3.11's `asyncio.wait_for`, which redis-py waits with, can lose one)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from sidecar.app.store import _stop_if_cancelled


async def test_a_task_whose_cancel_was_swallowed_stops_at_the_next_check() -> None:
    reached: list[str] = []

    async def worker() -> None:
        with contextlib.suppress(asyncio.CancelledError):  # what the lost cancel looks like
            await asyncio.sleep(10)
        reached.append("after the store call")
        _stop_if_cancelled()
        reached.append("waiting on the feed")  # where the follower used to sit for ever
        await asyncio.sleep(10)

    task = asyncio.create_task(worker())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert reached == ["after the store call"]


async def test_a_task_never_asked_to_stop_goes_on() -> None:
    async def worker() -> str:
        _stop_if_cancelled()
        return "on"

    assert await asyncio.create_task(worker()) == "on"
