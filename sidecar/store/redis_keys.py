"""Where `RedisTokenStore` keeps what: the key layout and the revocation member encoding.

Every key of one deployment starts with `{<prefix>}:`, a Redis Cluster hash tag, so all of them
hash to one slot. That is what lets one Lua script rotate a family, revoke it, index the
revocation and append it to the feed atomically even on Cluster (a script may only touch keys
of one slot). The price: on Cluster this state lives on one primary (and its replicas), so
Cluster buys failover and a shared endpoint, not sharding. Per-family tags would shard the
families but split a reuse across slots, reopening the gap between "family revoked" and
"revocation recorded" that the single script closes (docs/lifecycle.md).

    {p}:fam:<family_id>   hash   one family (fields below); TTL expires_at + margin
    {p}:families          zset   family_id by expires_at: ended families purged on sync
    {p}:revoked           zset   revocation member by expires_at: the live revocation set
    {p}:feed              stream one entry per revocation write, read by every sidecar
    {p}:epoch             string the data set's identity, set once (SET NX), no TTL

Keys are family ids and `(kind, iss, jti)` triples, never token text (issue 3).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import quote, unquote

from sidecar.store.base import Revocation, RevocationRow

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
class KeyLayout:
    """The keys under one prefix. The prefix may not contain braces (it is the hash tag)."""

    prefix: str

    def __post_init__(self) -> None:
        if not self.prefix or any(ch in self.prefix for ch in "{}"):
            raise ValueError("key prefix must be non-empty and free of '{' and '}'")

    @property
    def tag(self) -> str:
        return "{" + self.prefix + "}"

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
    issuer = _unquote_issuer(issuer)
    if "%" in key:
        key = unquote(key)
    if kind == "jti":
        return ("jti", issuer, key, expires_at)
    if kind == "family":
        return ("family", issuer, key, expires_at)
    return None


@lru_cache(maxsize=256)
def _unquote_issuer(issuer: str) -> str:
    return unquote(issuer)
