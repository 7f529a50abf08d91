"""How `RedisTokenStore` talks to redis-py: one call, or one call per partition, with every
driver failure turned into StoreUnavailableError ("the store is unreachable", never INTERNAL).
"""

from __future__ import annotations

import asyncio
import logging
import os
import traceback
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError, ResponseError

from sidecar.errors import StoreUnavailableError
from sidecar.store.redis_connect import RedisClient
from sidecar.store.redis_keys import Partition

log = logging.getLogger(__name__)
_T = TypeVar("_T")

DRIVER_ERRORS = (RedisError, RedisClusterException, OSError, asyncio.TimeoutError)
_CONNECTION_MODULE = os.path.join("redis", "asyncio", "connection.py")


def driver_failure(exc: BaseException) -> bool:
    """A driver error, or a write on a connection the driver closed under it (issue 16).

    redis-py 8.1.0 lets a write on a connection that another task just disconnected (its
    cluster client does that when it re-reads the topology after a primary died) escape as
    AttributeError ("'NoneType' object has no attribute 'writelines'") or TypeError instead
    of ConnectionError (redis/redis-py#4287). The command was never sent, so UNAVAILABLE is
    the exact answer. Only those two types raised inside redis-py's connection module count:
    any other AttributeError is a bug of ours and stays INTERNAL.
    """
    if isinstance(exc, DRIVER_ERRORS):
        return True
    if isinstance(exc, AttributeError | TypeError):
        frames = traceback.walk_tb(exc.__traceback__)
        return any(frame.f_code.co_filename.endswith(_CONNECTION_MODULE) for frame, _ in frames)
    return False


async def xread_one(
    client: RedisCluster, key: str, position: str, *, count: int, block_ms: int
) -> Any:
    """XREAD BLOCK of one stream on a Cluster, sent straight to the node owning its slot.

    redis-py cannot find XREAD's keys in its command table (they follow STREAMS), so its
    own routing asks the server, COMMAND GETKEYS twice (on the seed node), before every
    XREAD. A feed reader re-issues XREAD after every wake, and with one stream per partition
    nearly every revocation wakes one reader per sidecar: those two extra round trips were
    most of what a Revoke cost a sharded Cluster (issue 16, bench/revoke_cost.py). The slot
    is the stream key's own, so it is looked up here, again for every call (a migrated slot
    is followed). The rest is the driver's: MOVED and ASK are followed inside redis-py, and
    after an error its routing retries (a connection error, timeout, cluster down) the call
    is retried as many times as the client's Retry says, on the owner found after the
    topology is read again."""
    args = ("XREAD", "COUNT", count, "BLOCK", block_ms, "STREAMS", key, position)
    retries = client.retry.get_retries()
    for attempt in range(retries + 1):
        try:
            await client.initialize()  # after a failure: the topology again; else a no-op
            node = client.get_node_from_key(key)
            return await client.execute_command(*args, target_nodes=node)
        except Exception as exc:
            if attempt == retries or type(exc) not in RedisCluster.ERRORS_ALLOW_RETRY:
                raise
    raise AssertionError("unreachable")  # the last attempt returned or raised


async def close_quietly(client: RedisClient) -> None:
    try:
        await client.aclose()
    except DRIVER_ERRORS:
        pass  # closing a connection to a dead server: nothing left to release


async def read_persistence(caller: Caller) -> str:
    """From CONFIG GET appendonly / appendfsync / save; "unknown" when CONFIG is renamed,
    disabled or refused by an ACL (managed Redis often does). Not through `Caller.call`: a
    refusal here is an answer, not a failure to log on every poll."""
    caller.check_open()
    found: dict[str, str] = {}
    try:
        for name in ("appendonly", "appendfsync", "save"):
            found.update(await caller.client.config_get(name))  # type: ignore[arg-type]
    except ResponseError:
        return "unknown"  # the server answered, but not this command
    except DRIVER_ERRORS as exc:
        raise StoreUnavailableError() from exc
    return persistence_mode(found)


def persistence_mode(config: dict[str, str]) -> str:
    """The store's durability, from its CONFIG (see `TokenStore.persistence`)."""
    if "appendonly" not in config or "save" not in config:
        return "unknown"
    if config["appendonly"] == "yes":
        fsync = config.get("appendfsync", "")
        return f"aof-{fsync}" if fsync in ("always", "everysec", "no") else "unknown"
    return "rdb" if config["save"].strip() else "none"


class Caller:
    """Runs commands on one client until `close`; see `call` and `fan_out`."""

    def __init__(self, client: RedisClient) -> None:
        self.client = client
        self.cluster = isinstance(client, RedisCluster)
        self.closed = False

    def check_open(self) -> None:
        if self.closed:
            raise StoreUnavailableError()

    async def call(self, pending: Awaitable[_T]) -> _T:
        """Await a driver call; every driver failure becomes StoreUnavailableError."""
        if self.closed:
            if asyncio.iscoroutine(pending):
                pending.close()  # never started: do not leave an un-awaited coroutine
            raise StoreUnavailableError()
        try:
            return await pending
        except Exception as exc:
            if not driver_failure(exc):
                raise
            log.warning("redis token store call failed: %s", type(exc).__name__)
            raise StoreUnavailableError() from exc

    async def fan_out(
        self, parts: Sequence[Partition], make: Callable[[Any, Partition], Any]
    ) -> list[Any]:
        """`make(client, part)` for every partition, replies in order. A Cluster gets them
        concurrently (each goes to the primary owning its slot); one server gets them in
        one pipeline (one round trip, one connection). `make` may queue a script (a
        coroutine, awaited to queue it) or a plain command."""
        if self.cluster:
            # Discover the topology first, alone: redis-py replaces the seed node's
            # connections when it does, failing commands sent concurrently on them
            # (seen on every fresh client). A no-op once discovered.
            await self.call(self.client.initialize())
            # Every call finishes before this returns or raises: none is left running
            # against a store the caller already gave up on.
            replies = await asyncio.gather(
                *(self.call(make(self.client, p)) for p in parts), return_exceptions=True
            )
            for reply in replies:
                if isinstance(reply, BaseException):
                    raise reply
            return list(replies)
        self.check_open()
        # As a context: redis-py leaves a failed pipeline holding its connection otherwise
        # (its script preload runs outside its own clean-up), warning at garbage collection.
        async with self.client.pipeline(transaction=False) as pipe:
            for part in parts:
                queued = make(pipe, part)
                if asyncio.iscoroutine(queued):
                    await queued
            return list(await self.call(pipe.execute()))
