"""Waiting for a condition by progress, not by a fixed sleep: what the event-driven tests share."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest


async def eventually(
    condition: Callable[[], bool], what: str = "condition", timeout_s: float = 15.0
) -> None:
    """Return once `condition()` holds; fail the test naming `what` after `timeout_s` (a bound
    for a hung test, generous so a loaded machine never reaches it, never a speed check)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def eventually_async(
    condition: Callable[[], Awaitable[bool]], what: str = "condition", timeout_s: float = 15.0
) -> None:
    """`eventually` for a condition that must await to find out (an asyncio client's state)."""
    deadline = time.monotonic() + timeout_s
    while not await condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
