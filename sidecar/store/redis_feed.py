"""The push half of the Redis revocation feed: every partition's stream, read from fixed
positions (`RevocationFeed`).

Every revocation write appends `(member, expires_at)` to its partition's stream in the same
script (`redis_scripts`). `open_feed` reads the newest id of every
partition's stream, then this reads each stream from there with XREAD BLOCK on connections
of its own, so delivery is gap-free per stream while connected; the consumer reconciles after
opening (and after every reconnection).

One XREAD may name several streams only when they hash to one slot: on a standalone or
Sentinel-addressed Redis one XREAD covers every partition (one connection); on a Cluster
each partition has a reader of its own (PARTITIONS connections per sidecar, spread over
the primaries that own them). Any reader failing ends the whole feed with
StoreUnavailableError: a sidecar that cannot hear one partition cannot vouch for any.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

from redis.asyncio.cluster import RedisCluster

from sidecar.errors import StoreUnavailableError
from sidecar.store.base import Revocation
from sidecar.store.redis_codec import revocation_from, stream_entries
from sidecar.store.redis_connect import RedisClient, RedisConnector
from sidecar.store.redis_driver import Caller, close_quietly, driver_failure, xread_one
from sidecar.store.redis_keys import KeyLayout
from sidecar.store.redis_revocations import RevocationReads

log = logging.getLogger(__name__)

# How long one XREAD waits server-side before asking again (also bounds the detection of a
# silently dead connection: the socket read timeout is this plus `redis_timeout_s`).
FEED_BLOCK_S = 5.0
_READ_COUNT = 500
_CANCEL_AGAIN_S = 0.1


class StreamFeed:
    """XREAD BLOCK from fixed positions on a client of its own (see the module docstring).

    `positions` maps each stream key to the id after which reading starts; `per_key` gives
    every stream a reader of its own (Cluster). `on_close` is told once, on `close`."""

    def __init__(
        self,
        client: RedisClient,
        positions: dict[str, str],
        *,
        per_key: bool,
        on_close: Callable[[StreamFeed], None],
    ) -> None:
        self._client = client
        self._positions = dict(positions)
        keys = list(positions)
        self._groups = [[key] for key in keys] if per_key else [keys]
        self._queue: asyncio.Queue[list[Revocation] | BaseException] = asyncio.Queue()
        self._readers: list[asyncio.Task[None]] = []
        self._on_close = on_close
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[Revocation]:
        if self._closed:
            raise StoreUnavailableError()
        if not self._readers:
            self._readers = [asyncio.create_task(self._read(group)) for group in self._groups]
        while True:
            item = await self._queue.get()
            if isinstance(item, BaseException):
                raise item
            for revocation in item:
                yield revocation

    async def _read(self, keys: list[str]) -> None:
        """One reader: its streams' new entries go to the queue in order; its failure too."""
        block_ms = int(FEED_BLOCK_S * 1000)
        positions = self._positions
        try:
            while True:
                if isinstance(self._client, RedisCluster):  # one key: see xread_one
                    key = keys[0]
                    at = positions[key]
                    reply = await xread_one(
                        self._client, key, at, count=_READ_COUNT, block_ms=block_ms
                    )
                else:
                    streams = {key: positions[key] for key in keys}
                    reply = await self._client.xread(streams, count=_READ_COUNT, block=block_ms)  # type: ignore[arg-type]
                batch = []
                for stream, entries in stream_entries(reply):
                    for entry_id, fields in entries:
                        positions[stream] = entry_id
                        revocation = revocation_from(fields)
                        if revocation is not None:
                            batch.append(revocation)
                if batch:
                    self._queue.put_nowait(batch)
        except Exception as exc:
            if not driver_failure(exc):
                self._queue.put_nowait(exc)
                return
            if not self._closed:
                log.warning("revocation feed lost: %s", type(exc).__name__)
            lost = StoreUnavailableError()
            lost.__cause__ = exc
            self._queue.put_nowait(lost)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._on_close(self)
        pending = set(self._readers)
        while pending:
            # Cancelled again until it ends: Python 3.11's asyncio.wait_for (redis-py sends
            # with it) loses a cancel that lands as the send completes, and the reader then
            # sat in its next XREAD, close() waiting for ever (seen on a Cluster, issue 16).
            for reader in pending:
                reader.cancel()
            _, pending = await asyncio.wait(pending, timeout=_CANCEL_AGAIN_S)
        self._queue.put_nowait(StoreUnavailableError())  # ends a pending iteration
        await close_quietly(self._client)


async def open_feed(
    connector: RedisConnector, keys: KeyLayout, *, on_close: Callable[[StreamFeed], None]
) -> StreamFeed:
    """Fix every stream's position (its newest entry now), so nothing written later is
    missed, and follow them on a client of the feed's own. The version-1 stream is followed
    only if it exists now (a version-1 sidecar still running); one created later is read by
    the polls."""
    client = connector.client(read_timeout_s=FEED_BLOCK_S + 2.0)
    caller = Caller(client)
    reads = RevocationReads(caller, keys)
    try:
        newest = await reads.newest_ids()
    except StoreUnavailableError:
        await close_quietly(client)
        raise
    positions = {part.feed: at for part, at in zip(reads.read_parts, newest, strict=True)}
    if newest[-1] == "0-0":
        del positions[keys.legacy.feed]
    return StreamFeed(client, positions, per_key=caller.cluster, on_close=on_close)
