"""What the revocation feed asks of a sharded Redis Cluster per revocation (issue 16).

With one stream per partition, nearly every revocation wakes one feed reader in every
sidecar, which then sends its next XREAD. redis-py's own routing cannot find XREAD's keys in
its command table and asked the seed node COMMAND GETKEYS twice before every XREAD: three
round trips per wake, two of them all on one primary (bench/revoke_cost.py measured 5.3
GETKEYS per Revoke with three sidecars). The feed now routes each XREAD by its stream's own
slot (`redis_driver.xread_one`). Counted with `INFO commandstats` on every primary of a real
three-primary Cluster, not timed.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from typing import Any

import pytest
import redis

from sidecar.clock import SystemClock
from sidecar.config import StoreSettings
from sidecar.store.base import Revocation, deadline_for
from sidecar.store.redis import RedisTokenStore
from sidecar.store.redis_connect import RedisConnector
from sidecar.store.redis_feed import FEED_BLOCK_S
from sidecar.store.redis_keys import PARTITIONS, KeyLayout
from tests.support.redis import unique_prefix

pytestmark = pytest.mark.redis
if shutil.which("redis-server") is None and os.environ.get("AUTHSIDECAR_REQUIRE_REDIS") != "1":
    pytest.skip("redis-server not installed", allow_module_level=True)

ISS = "https://issuer.test"


def _primary_ports(url: str) -> list[int]:
    client: Any = redis.RedisCluster.from_url(url, socket_timeout=5)
    try:
        return sorted(int(node.port) for node in client.get_primaries())
    finally:
        client.close()


def _calls(ports: list[int]) -> dict[str, int]:
    """Successful calls of every command, summed over the nodes (`INFO commandstats`; a
    first EVALSHA refused NOSCRIPT on a node, then loaded and sent again, counts once)."""
    total: dict[str, int] = {}
    for port in ports:
        client: Any = redis.Redis(port=port, socket_timeout=5)
        try:
            for name, stats in client.info("commandstats").items():
                command = name.removeprefix("cmdstat_")
                done = int(stats["calls"]) - int(stats.get("failed_calls", 0))
                total[command] = total.get(command, 0) + done
        finally:
            client.close()
    return total


async def test_cluster_feed_wakes_cost_one_xread_each_and_no_key_lookups(
    redis_cluster3_url: str,
) -> None:
    """Revocations written one at a time, each on its own partition's stream and each
    taken from the feed before the next: over all three primaries, no COMMAND GETKEYS at
    all, one EVALSHA per revocation, and one XREAD per wake (plus each reader's first one
    and its re-issue every FEED_BLOCK_S when idle, bounded by the elapsed time)."""
    prefix = unique_prefix()
    settings = StoreSettings.model_validate(
        {
            "backend": "redis",
            "redis_url": redis_cluster3_url,
            "redis_key_prefix": prefix,
            "redis_mode": "cluster",
            "redis_timeout_s": 5,  # a loaded CI machine is slow, not down
        }
    )
    clock = SystemClock()
    store = RedisTokenStore(
        RedisConnector(settings.redis_options()), clock=clock, key_prefix=prefix
    )
    keys = KeyLayout(prefix)
    until = int(clock.now()) + 3600
    # Two revocations on every partition, so every reader wakes and re-reads twice.
    revocations: list[Revocation] = []
    n = 0
    while len(revocations) < 2 * PARTITIONS:
        key = f"jti-{n}"
        n += 1
        held = sum(keys.partition_of(r.key) == keys.partition_of(key) for r in revocations)
        if held < 2:
            revocations.append(Revocation("jti", ISS, key, until))
    ports = _primary_ports(redis_cluster3_url)
    assert len(ports) == 3
    try:
        feed = await store.open_revocation_feed()
        reader = feed.__aiter__()
        before = _calls(ports)
        began = time.monotonic()
        for revocation in revocations:
            await store.revoke(revocation, deadline_ms=deadline_for(clock.now(), 5.0))
            assert await anext(reader) == revocation
        elapsed = time.monotonic() - began
        after = _calls(ports)
        await feed.close()
    finally:
        await store.close()
    sent = {name: after.get(name, 0) - before.get(name, 0) for name in after}
    written = len(revocations)
    assert sent.get("command|getkeys", 0) == 0, sent
    assert sent.get("evalsha", 0) == written, sent
    idle_rereads = PARTITIONS * (1 + math.ceil(elapsed / FEED_BLOCK_S))
    assert written <= sent.get("xread", 0) <= written + idle_rereads, (sent, elapsed)
