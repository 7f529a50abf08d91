"""redis-py failures that are not RedisError still mean "the store is unreachable" (issue 16).

Found under load while a Cluster primary was killed: the cluster client re-reads the
topology and disconnects connections another task is writing on, and redis-py 8.1.0 lets
that write fail with AttributeError instead of ConnectionError (redis/redis-py#4287). The
sidecar answered Refresh and Revoke INTERNAL_ERROR; it must answer UNAVAILABLE. Here the race
is reproduced deterministically on a real connection to the real shared Redis.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import pytest
from redis.asyncio.connection import Connection

from sidecar.errors import StoreUnavailableError
from tests.contract.test_token_store import redis_store
from tests.support.redis import unique_prefix

pytestmark = pytest.mark.redis


async def _write_on_a_connection_closed_under_it(url: str) -> asyncio.Task[None]:
    """A PING whose connection another task disconnects between the connection check and
    the write: what the cluster client's topology refresh does to in-flight commands."""
    address = urlsplit(url)
    conn = Connection(host=address.hostname or "", port=address.port or 6379, socket_timeout=5)
    await conn.connect()  # type: ignore[no-untyped-call]  # unannotated in redis-py
    write = asyncio.create_task(conn.send_packed_command(conn.pack_command("PING")))
    await asyncio.sleep(0)  # the write task is now waiting to run its inner write
    await conn.disconnect(nowait=True)  # the writer is gone before it runs
    return write


async def test_a_write_on_a_connection_closed_under_it_is_store_unavailable(
    redis_url: str,
) -> None:
    store = redis_store(redis_url, unique_prefix())
    try:
        write = await _write_on_a_connection_closed_under_it(redis_url)
        with pytest.raises(StoreUnavailableError) as caught:
            await store._call(write)
        # The driver's own failure, chained for operators: not a ConnectionError.
        assert isinstance(caught.value.__cause__, AttributeError | TypeError)
    finally:
        await store.close()


async def test_an_attribute_error_outside_the_driver_is_not_masked(redis_url: str) -> None:
    async def our_bug() -> None:
        raise AttributeError("a bug of ours")

    store = redis_store(redis_url, unique_prefix())
    try:
        with pytest.raises(AttributeError):
            await store._call(our_bug())
    finally:
        await store.close()
