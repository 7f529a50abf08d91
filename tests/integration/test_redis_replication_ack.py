"""`store.redis_wait_replicas` (issue 16): a rotation is acknowledged only once replicated.

Found by the Sentinel failover test under load: Sentinel promotes the replica before it
demotes the old primary, and rotations the old primary acknowledged in between are discarded
when it resynchronises from the new one. The client holds a successor the family never
recorded; presenting it is then answered REFRESH_TOKEN_REUSED and the family dies. With WAIT,
a rotation no replica confirmed is answered UNAVAILABLE instead, and the retry is safe.
"""

from __future__ import annotations

import pytest

from sidecar.errors import StoreUnavailableError
from sidecar.store.base import RotateOutcome
from tests.contract.test_token_store import NOW, _family, _later, _rotate, redis_store
from tests.support.redis import RedisServer

pytestmark = pytest.mark.redis


async def test_a_rotation_no_replica_confirmed_is_unavailable_and_its_retry_is_safe(
    redis_server: RedisServer,
) -> None:
    """A primary with no replica: WAIT 1 times out, so nothing is acknowledged."""
    store = redis_store(redis_server.url, "wait", redis_wait_replicas="1")
    try:
        with pytest.raises(StoreUnavailableError):
            await store.create_family(_family(), deadline_ms=_later())
        # It was written on the primary all the same (WAIT cannot undo): a retry of the
        # same rotation is answered exactly as if the first reply had been lost.
        assert await store.get_family("fam-1") == _family()
        with pytest.raises(StoreUnavailableError):
            await _rotate(store, "fam-1", "j0", "j1", NOW + 1)
        with pytest.raises(StoreUnavailableError):
            await _rotate(store, "fam-1", "j0", "j1", NOW + 1)
        family = await store.get_family("fam-1")
        assert family is not None and (family.current_jti, family.previous_jti) == ("j1", "j0")
    finally:
        await store.close()


async def test_without_wait_the_same_rotation_is_acknowledged(redis_server: RedisServer) -> None:
    store = redis_store(redis_server.url, "nowait")
    try:
        await store.create_family(_family(), deadline_ms=_later())
        result = await _rotate(store, "fam-1", "j0", "j1", NOW + 1)
        assert result.outcome is RotateOutcome.ROTATED
    finally:
        await store.close()
