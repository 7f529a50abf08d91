"""The Redis key layout and addressing, checked without a server.

Cluster runs a script only when all its keys hash to one slot, so every key one script
touches (a family, its partition's revocation set and feed) must carry one hash tag, while the
partitions spread over the slot space (issue 16); this is computed with redis-py's own slot
function (CRC16 of the tag), the one a Cluster client routes by. Sentinel and Cluster clients
are only constructed here (construction never connects): no Sentinel or Cluster deployment
runs in this suite.
"""

from __future__ import annotations

import collections
import secrets
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from sidecar.config import StoreSettings, load_settings
from sidecar.errors import ConfigError
from sidecar.store.base import Revocation
from sidecar.store.redis_connect import RedisConnector
from sidecar.store.redis_keys import PARTITIONS, KeyLayout, decode_member, encode_member


@pytest.mark.parametrize("family_id", ["fam-1", "{other}", "a}b{c", "x" * 200, "ünï"])
def test_every_key_of_one_family_hashes_to_one_slot(family_id: str) -> None:
    """The rotate script touches the family, its partition's revocation set and feed: one
    slot, whatever the id's characters (braces in the id never become the hash tag)."""
    part = KeyLayout("authsidecar").partition_of(family_id)
    names = [part.family(family_id), part.families, part.revoked, part.feed, part.epoch]
    assert {key_slot(name.encode()) for name in names} == {part.slot}
    assert KeyLayout("authsidecar").family(family_id) == part.family(family_id)


def test_partitions_spread_evenly_over_the_slot_space() -> None:
    """One partition in each sixteenth of the slots: primaries owning equal contiguous slot
    ranges (what `redis-cli --cluster create` makes) get an equal share of partitions."""
    slots = [part.slot for part in KeyLayout("authsidecar").partitions]
    span = 16384 // PARTITIONS
    assert [slot // span for slot in slots] == list(range(PARTITIONS))
    for primaries in (1, 2, 3, 4, 5, 8, 16):
        ranges = [16384 * n // primaries for n in range(primaries + 1)]
        per_primary = [
            sum(1 for slot in slots if ranges[n] <= slot < ranges[n + 1]) for n in range(primaries)
        ]
        assert max(per_primary) - min(per_primary) <= 1, (primaries, per_primary)


def test_families_and_jtis_spread_over_every_partition() -> None:
    keys = KeyLayout("authsidecar")
    counts = collections.Counter(keys.partition_of(secrets.token_urlsafe(16)) for _ in range(8000))
    assert set(counts) == set(keys.partitions)
    assert max(counts.values()) < 2 * min(counts.values())


def test_the_partition_of_an_id_is_the_same_in_every_process() -> None:
    """CRC-32, not Python's per-process keyed hash: every sidecar must find one family in
    one place (pinned values)."""
    keys = KeyLayout("authsidecar")
    assert keys.partition_of("family-1") is keys.partitions[13]
    assert keys.partition_of("jti-7") is keys.partitions[5]
    # The tags too: a sidecar computing other salts would look in other slots.
    tags = [part.tag for part in keys.partitions[:3]]
    assert tags == ["{authsidecar:0:21}", "{authsidecar:1:22}", "{authsidecar:2:12}"]
    assert keys.family("family-1") == keys.partitions[13].tag + ":fam:family-1"
    assert keys.legacy.revoked == "{authsidecar}:revoked"


def test_deployments_with_different_prefixes_use_different_keys() -> None:
    one, two = KeyLayout("a"), KeyLayout("b")
    names = [
        {p.feed, p.revoked, p.families, p.epoch}
        for keys in (one, two)
        for p in (*keys.partitions, keys.legacy)
    ]
    half = len(names) // 2
    assert set().union(*names[:half]).isdisjoint(set().union(*names[half:]))


@pytest.mark.parametrize("bad", ["", "a{b", "a}b"])
def test_prefix_with_braces_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        KeyLayout(bad)


@pytest.mark.parametrize(
    "revocation",
    [
        Revocation("jti", "https://issuer.test", "abc", 1),
        Revocation("family", "urn:x y", "fam 1%20", 2),
        Revocation("jti", "iss", "a\nb{c}", 3),
    ],
)
def test_revocation_members_round_trip_whatever_the_characters(revocation: Revocation) -> None:
    member = encode_member(revocation.kind, revocation.issuer, revocation.key)
    assert member.count(" ") == 2
    assert decode_member(member, revocation.expires_at) == revocation


@pytest.mark.parametrize("member", ["", "jti iss", "session iss key", "jti a b c"])
def test_malformed_members_are_ignored(member: str) -> None:
    assert decode_member(member, 1) is None


async def test_standalone_url_builds_a_client_with_timeouts() -> None:
    settings = StoreSettings(backend="redis", redis_url="unix:///run/redis.sock?db=2")
    client = RedisConnector(settings).client()
    assert isinstance(client, Redis)
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["path"], kwargs["db"], kwargs["socket_timeout"]) == ("/run/redis.sock", 2, 1.0)
    await client.aclose()


async def test_replies_are_parsed_by_hiredis() -> None:
    """redis-py falls back to its pure-Python parser without hiredis, silently: that costs
    ~100 µs of a Refresh on Redis (docs/performance.md), so losing the dependency fails here."""
    settings = StoreSettings(backend="redis", redis_url="redis://127.0.0.1:6379/0")
    client = RedisConnector(settings).client()
    assert isinstance(client, Redis)
    pool: Any = client.connection_pool  # make_connection is unannotated in redis-py
    assert type(pool.make_connection()._parser).__name__ == "_AsyncHiredisParser"
    await client.aclose()


async def test_sentinel_mode_asks_the_sentinels_for_the_named_master() -> None:
    settings = StoreSettings(
        backend="redis",
        redis_mode="sentinel",
        redis_sentinels=("10.0.0.1:26379", "10.0.0.2:26379"),
        redis_sentinel_master="tokens",
        redis_url="redis://user:s3cret@ignored:1/3",
        redis_timeout_s=0.5,
    )
    connector = RedisConnector(settings)
    client = connector.client()
    assert isinstance(client, Redis)
    pool: object = client.connection_pool
    assert getattr(pool, "service_name", None) == "tokens"
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["username"], kwargs["password"], kwargs["db"]) == ("user", "s3cret", 3)
    assert kwargs["socket_timeout"] == 0.5
    await client.aclose()
    await connector.close()


async def test_cluster_mode_builds_a_cluster_client_from_a_seed_node() -> None:
    settings = StoreSettings(
        backend="redis", redis_mode="cluster", redis_url="redis://10.0.0.1:7000/0"
    )
    client = RedisConnector(settings).client()
    assert isinstance(client, RedisCluster)
    seeds = client.nodes_manager.startup_nodes.values()
    assert [(n.host, n.port) for n in seeds] == [("10.0.0.1", 7000)]
    await client.aclose()


@pytest.mark.parametrize(
    ("store", "named"),
    [
        ({"backend": "redis", "redis_url": "http://x"}, "store"),
        ({"backend": "redis", "redis_mode": "sentinel"}, "store"),
        ({"backend": "redis", "redis_mode": "cluster", "redis_url": "unix:///s"}, "store"),
        ({"backend": "redis", "redis_key_prefix": "a{b}"}, "store.redis_key_prefix"),
        ({"on_unavailable": "ignore"}, "store.on_unavailable"),
        # WAIT must run on the connection that wrote; the cluster client hides it (issue 16).
        ({"backend": "redis", "redis_mode": "cluster", "redis_wait_replicas": 1}, "store"),
        ({"backend": "redis", "redis_wait_replicas": -1}, "store.redis_wait_replicas"),
    ],
)
def test_bad_redis_settings_are_refused_naming_the_setting(
    store: dict[str, object], named: str
) -> None:
    with pytest.raises(ConfigError, match=f"setting {named}"):
        load_settings(None, store=store)


def test_refresh_grace_defaults_to_five_seconds() -> None:
    assert load_settings(None).tokens.refresh_grace_s == 5
