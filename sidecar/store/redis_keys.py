"""Where `RedisTokenStore` keeps what: the key layout and the revocation member encoding.

Layout version 2 (issue 16): the deployment's state is split into `PARTITIONS` partitions,
each under a Redis Cluster hash tag of its own, so a Cluster spreads the families, the
revocations and the work over its primaries while every operation on one family still runs
as one script on one slot (a script may only touch keys of one slot):

    {p:i:n}:fam:<family_id>   hash   one family (fields below); TTL expires_at + margin
    {p:i:n}:families          zset   family_id by expires_at: ended families purged on sync
    {p:i:n}:revoked           zset   revocation member by expires_at: this partition's set
    {p:i:n}:feed              stream one entry per revocation write in this partition
    {p:i:n}:epoch             string this partition's data set identity, set once (SET NX)
    {p:snapshot}:data         string a sidecar's revocation snapshot (store/redis_snapshot.py)

`p` is the configured prefix, `i` the partition (0..PARTITIONS-1) and `n` a salt picked so the
tag's slot lies in the i-th sixteenth of the slot space: a Cluster whose primaries own equal
contiguous slot ranges (what `redis-cli --cluster create` and reshard-by-count give) then
holds `PARTITIONS / primaries` partitions on each, never all of them on one.

Which partition: a family and everything about it (its hash, its index entry, its own
revocation written on reuse or by a family Revoke, and that revocation's feed entry) live in
`partition_of(family_id)`, so the rotate script still revokes, records and publishes a reuse
in one atomic step. A jti revocation lives in `partition_of(jti)`. Both ids are random, so the
load spreads evenly. PARTITIONS is part of the layout: changing it moves every key, so it is
a constant, and a Cluster of more than 16 primaries leaves the extra ones idle.

Layout version 1 (before issue 16): every key under one tag `{p}` (`{p}:revoked`, `{p}:feed`,
`{p}:fam:<id>`, `{p}:families`, `{p}:epoch`). Version 2 never writes those keys; it reads
`{p}:revoked` and `{p}:feed` as one more read-only partition while they exist, so no live
revocation written by a version-1 sidecar is lost on upgrade (docs/operations.md).

Keys are family ids and `(kind, iss, jti)` triples, never token text (issue 3).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from urllib.parse import quote, unquote

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from sidecar.store.base import Revocation, RevocationRow

PARTITIONS = 16

# Family hash fields, in FamilyRecord order.
FAMILY_FIELDS = (
    "family_id",
    "issuer",
    "subject",
    "audience",
    "scope",
    "client_id",
    "claims_json",
    "created_at",
    "expires_at",
    "current_jti",
    "revoked",
    "previous_jti",
    "rotated_at",
)
# The family's own revocation member, precomputed at creation so the Lua script never has
# to encode an issuer (its cjson escapes differently from Python's json).
FAMILY_REVOCATION_FIELD = "revocation"


@dataclass(frozen=True, slots=True)
class Partition:
    """The keys of one partition (one hash tag, one slot)."""

    tag: str

    def family(self, family_id: str) -> str:
        return f"{self.tag}:fam:{family_id}"

    @property
    def families(self) -> str:
        return f"{self.tag}:families"

    @property
    def revoked(self) -> str:
        return f"{self.tag}:revoked"

    @property
    def feed(self) -> str:
        return f"{self.tag}:feed"

    @property
    def epoch(self) -> str:
        return f"{self.tag}:epoch"

    @property
    def slot(self) -> int:
        return key_slot(self.tag.encode())


@dataclass(frozen=True, slots=True)
class KeyLayout:
    """The keys under one prefix. The prefix may not contain braces (it is in the hash tag)."""

    prefix: str
    partitions: tuple[Partition, ...] = field(init=False)

    def __post_init__(self) -> None:
        if not self.prefix or any(ch in self.prefix for ch in "{}"):
            raise ValueError("key prefix must be non-empty and free of '{' and '}'")
        object.__setattr__(self, "partitions", _partitions(self.prefix))

    def partition_of(self, key: str) -> Partition:
        """The partition of a family id or jti (CRC-32 of its UTF-8: stable everywhere)."""
        data = key.encode("utf-8", "surrogatepass")
        return self.partitions[zlib.crc32(data) % PARTITIONS]

    def family(self, family_id: str) -> str:
        return self.partition_of(family_id).family(family_id)

    @property
    def snapshot_tag(self) -> str:
        """The hash tag of the store-served revocation snapshot (store/redis_snapshot.py):
        a slot of its own, since no script touches it together with a partition's keys."""
        return "{" + self.prefix + ":snapshot}"

    @property
    def legacy(self) -> Partition:
        """Layout version 1's single tag: read (revocations and feed) while it exists."""
        return Partition("{" + self.prefix + "}")


@lru_cache(maxsize=64)
def _partitions(prefix: str) -> tuple[Partition, ...]:
    """`{prefix:i:n}` with the smallest salt `n` putting partition i's slot in the i-th
    equal range of the slot space (about PARTITIONS tries each: computed once per prefix)."""
    span = REDIS_CLUSTER_HASH_SLOTS // PARTITIONS
    found = []
    for i in range(PARTITIONS):
        salt = 0
        while key_slot(f"{prefix}:{i}:{salt}".encode()) // span != i:
            salt += 1
        found.append(Partition("{" + f"{prefix}:{i}:{salt}" + "}"))
    return tuple(found)


def encode_member(kind: str, issuer: str, key: str) -> str:
    """`kind issuer key`, each part percent-encoded, so a space or brace cannot split it."""
    return " ".join(quote(part, safe="") for part in (kind, issuer, key))


def decode_member(member: str, expires_at: int) -> Revocation | None:
    """The revocation a member names; None for anything malformed (never trusted blindly)."""
    parts = member.split(" ")
    if len(parts) != 3:
        return None
    kind, issuer, key = (unquote(part) for part in parts)
    if kind == "jti":
        return Revocation("jti", issuer, key, expires_at)
    if kind == "family":
        return Revocation("family", issuer, key, expires_at)
    return None


def decode_row(member: str, expires_at: int) -> RevocationRow | None:
    """`decode_member` as a plain tuple, for bulk loads: a part without a percent sign is
    taken as is, and issuers (a handful, each repeated on every member) are decoded once."""
    parts = member.split(" ")
    if len(parts) != 3:
        return None
    kind, issuer, key = parts
    issuer = unquote_issuer(issuer)
    if "%" in key:
        key = unquote(key)
    if kind == "jti":
        return ("jti", issuer, key, expires_at)
    if kind == "family":
        return ("family", issuer, key, expires_at)
    return None


@lru_cache(maxsize=256)
def unquote_issuer(issuer: str) -> str:
    return unquote(issuer)
