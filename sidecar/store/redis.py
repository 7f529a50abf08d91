"""A `TokenStore` in Redis, shared by every sidecar of a fleet (issue 3).

Usage: `store = RedisTokenStore(RedisConnector(settings), clock=clock)`; nothing connects
until the first call; `await store.close()`.

* Atomicity: every write is one Lua script (`redis_scripts`), run with EVALSHA
  (`register_script` loads it again after a server restart or failover). Rotation, grace and
  reuse detection are decided inside the script, so two sidecars presenting one refresh token
  at the same instant see exactly one ROTATED, and a SIGKILLed sidecar cannot leave half a
  rotation behind.
* Layout (`redis_keys`, issue 16): the state is split over PARTITIONS hash tags, so a
  Cluster spreads it over its primaries. A family, its reuse revocation and that
  revocation's feed entry share the family's partition, so each script touches one slot.
  Revocations are members `(kind, iss, key)` of the partition's sorted set scored by
  `expires_at`; never token text.
* Expiry: every key has a TTL (families: `expires_at` plus a margin; the sets: their latest
  entry plus the margin; the feeds: a day after their last write), and `purge` drops expired
  revocations and ended families, so state never outgrows what is live.
* Reading at scale (`redis_revocations`): a full load is a ZSCAN in pages, partition after
  partition (the first load's: several at a time, grouped by the server,
  `redis_grouped_scan`); afterwards a sidecar reads only the feed entries after its per-partition
  cursors, which also tells when a stream can no longer vouch for them (trimmed past the
  cursor, or lost): then the sidecar loads everything again. Needs Redis >= 7.0.
* A new pod's first load (`redis_snapshot`): one sidecar per interval keeps a copy of its
  revocation snapshot in the store (`write_snapshot`); a sidecar with no local snapshot
  loads it (`read_snapshot`) and follows it with the feed, like a restart (SnapshotStore).
* Propagation (`redis_feed`): every revocation write appends `(member, expires_at)` to its
  partition's stream in the same script; `open_revocation_feed` reads them all from the
  positions found on opening.
* Deadlines (issue 13): every write passes its `deadline_ms` to its script, which does nothing
  past it (server `TIME`) and answers `late`, raised as StoreDeadlineError.
* Identity: each partition has an epoch key, set once (SET NX); `epoch` is a digest of all of
  them, so a shard that lost its data (or a Redis restarted empty) changes it and the
  sidecars write back their revocations.
* Failure: every driver error (connection refused or lost, timeout, cluster down, a failover
  in progress, an error reply) becomes StoreUnavailableError with a generic message; the cause
  is chained for operators and logged without values (`redis_driver`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from redis.commands.core import AsyncScript

from sidecar.clock import Clock
from sidecar.errors import StoreDeadlineError, StoreUnavailableError
from sidecar.store import redis_scripts
from sidecar.store.base import (
    FamilyRecord,
    Revocation,
    RevocationGroup,
    RevocationRow,
    RotateOutcome,
    RotateResult,
    Rotation,
)
from sidecar.store.redis_codec import family_fields, family_from
from sidecar.store.redis_connect import RedisConnector
from sidecar.store.redis_driver import Caller, close_quietly, read_persistence
from sidecar.store.redis_feed import StreamFeed, open_feed
from sidecar.store.redis_grouped_scan import GroupedScan
from sidecar.store.redis_keys import FAMILY_REVOCATION_FIELD, KeyLayout, Partition, encode_member
from sidecar.store.redis_legacy import LegacyFamilies
from sidecar.store.redis_revocations import RevocationReads
from sidecar.store.redis_snapshot import StoredSnapshot

log = logging.getLogger(__name__)
_T = TypeVar("_T")

# Families and revocation sets outlive their last entry by this much (clock skew between
# sidecars; a REVOKED answer is as good as UNKNOWN after the end anyway).
TTL_MARGIN_S = 300
# A feed only has to cover the instant between a write and every reader's next read.
FEED_MAXLEN = 10_000
FEED_TTL_S = 86_400
# Revocations written back per script call (issue 13), so one call stays short.
RESTORE_BATCH = 500


class RedisTokenStore:
    """A `TokenStore` on redis.asyncio; see the module docstring for the guarantees."""

    def __init__(self, connector: RedisConnector, *, clock: Clock, key_prefix: str) -> None:
        self._connector = connector
        self._clock = clock
        self._keys = KeyLayout(key_prefix)
        self._caller = Caller(connector.client())
        self._client = self._caller.client
        self._create = self._client.register_script(redis_scripts.CREATE_FAMILY)
        self._rotate = self._client.register_script(redis_scripts.ROTATE)
        self._revoke = self._client.register_script(redis_scripts.REVOKE)
        self._epoch = self._client.register_script(redis_scripts.EPOCH)
        self._reads = RevocationReads(self._caller, self._keys)
        self._bytes = Caller(connector.client(decode=False))  # the first load's (GroupedScan)
        self._grouped = GroupedScan(self._bytes, self._reads.read_parts)
        self._legacy = LegacyFamilies(self._caller, self._keys, margin_s=TTL_MARGIN_S)
        self._snapshot = StoredSnapshot(self._caller, self._bytes, self._keys, ttl_s=FEED_TTL_S)
        self._feeds: set[StreamFeed] = set()

    @property
    def timeout_s(self) -> float:
        return self._connector.timeout_s

    # The next ZSCAN page is computed by Redis while this process merges the current one.
    scan_ahead = True

    async def ping(self) -> None:
        await self._call(self._client.ping())

    async def epoch(self, candidate: str, *, deadline_ms: int) -> str:
        """Every partition's epoch (set to `candidate` where absent): the one they share, or
        a digest of all of them once a partition lost its data and got a new one."""

        def epoch(client: Any, part: Partition) -> Any:
            return self._epoch(keys=[part.epoch], args=[deadline_ms, candidate], client=client)

        replies = await self._caller.fan_out(self._keys.partitions, epoch)
        if any(isinstance(reply, list) for reply in replies):
            raise StoreDeadlineError()
        epochs = [str(reply) for reply in replies]
        if len(set(epochs)) == 1:
            return epochs[0]  # the usual case: every partition set by one candidate
        return hashlib.sha256(",".join(epochs).encode()).hexdigest()[:32]

    async def persistence(self) -> str:
        return await read_persistence(self._caller)

    async def create_family(self, family: FamilyRecord, *, deadline_ms: int) -> None:
        fields = family_fields(family)
        fields[FAMILY_REVOCATION_FIELD] = encode_member("family", family.issuer, family.family_id)
        ttl = self._ttl(family.expires_at)
        args: list[str | int] = [deadline_ms, ttl, family.expires_at, family.family_id]
        for name, value in fields.items():
            args += [name, value]
        part = self._keys.partition_of(family.family_id)
        keys = [part.family(family.family_id), part.families]
        created = await self._replicated(self._create, keys, args, late=redis_scripts.LATE)
        if created == redis_scripts.LATE:
            raise StoreDeadlineError()
        if int(created) != 1:
            raise ValueError("family id already exists")

    async def get_family(self, family_id: str) -> FamilyRecord | None:
        fields: dict[str, str] = await self._call(
            self._client.hgetall(self._keys.family(family_id))  # type: ignore[arg-type]
        )
        if fields:
            return family_from(fields)
        return await self._legacy.get(family_id)

    async def rotate(self, rotation: Rotation) -> RotateResult:
        """One script on the family's partition: the reuse revocation goes to that
        partition's set and feed, so it is recorded and published in the same step. A
        family unknown there may be a version-1 family, moved on first use (redis_legacy)."""
        result = await self._rotate_here(rotation)
        if result.outcome is not RotateOutcome.UNKNOWN:
            return result
        r = rotation
        if await self._legacy.move(r.family_id, now=r.now, deadline_ms=r.deadline_ms):
            return await self._rotate_here(rotation)
        return result

    async def _rotate_here(self, rotation: Rotation) -> RotateResult:
        r = rotation
        part = self._keys.partition_of(r.family_id)
        keys = [part.family(r.family_id), part.revoked, part.feed]
        args: list[str | int] = [
            r.deadline_ms, r.presented_jti, r.next_jti, r.now, r.grace_s, TTL_MARGIN_S,
            FEED_MAXLEN, FEED_TTL_S, r.subject, r.issuer, r.scope, r.revoke_extra_s,
        ]  # fmt: skip
        reply: list[str] = await self._replicated(
            self._rotate, keys, args, late=[redis_scripts.LATE]
        )
        if reply[0] == redis_scripts.LATE:
            raise StoreDeadlineError()
        outcome = RotateOutcome(reply[0])
        if outcome is RotateOutcome.UNKNOWN:
            return RotateResult(outcome, None)
        rest = reply[1:]
        until = int(rest.pop(0)) if outcome is RotateOutcome.REUSED else 0
        family = family_from(dict(zip(rest[0::2], rest[1::2], strict=True)))
        revocation = None
        if outcome is RotateOutcome.REUSED:
            revocation = Revocation("family", family.issuer, family.family_id, until)
        return RotateResult(outcome, family, revocation)

    async def revoke(self, revocation: Revocation, *, deadline_ms: int) -> None:
        await self.restore((revocation,), deadline_ms=deadline_ms)

    async def restore(self, revocations: Sequence[Revocation], *, deadline_ms: int) -> int:
        """Grouped by partition, each group in batches of RESTORE_BATCH, each batch one
        script (one step); a failure part way leaves the earlier batches written, which is
        what a retry would write again."""
        groups: dict[Partition, list[Revocation]] = {}
        for r in revocations:
            groups.setdefault(self._keys.partition_of(r.key), []).append(r)
        written = 0
        for part, group in groups.items():
            for start in range(0, len(group), RESTORE_BATCH):
                batch = group[start : start + RESTORE_BATCH]
                written += await self._revoke_batch(part, batch, deadline_ms)
        return written

    async def _revoke_batch(
        self, part: Partition, batch: Sequence[Revocation], deadline_ms: int
    ) -> int:
        keys = [part.revoked, part.feed]
        latest = max(r.expires_at for r in batch)
        args: list[str | int] = [deadline_ms, self._ttl(latest), FEED_MAXLEN, FEED_TTL_S]
        for r in batch:
            family_index = 0
            if r.kind == "family":
                keys.append(part.family(r.key))
                family_index = len(keys)
            args += [encode_member(r.kind, r.issuer, r.key), r.expires_at, family_index]
        done = await self._call(self._revoke(keys=keys, args=args))
        if done == redis_scripts.LATE:
            raise StoreDeadlineError()
        return int(done)

    async def purge(self, now: int) -> None:
        await self._reads.purge(now)

    async def count_revocations(self, from_expires_at: int) -> int | None:
        return await self._reads.count(from_expires_at)

    async def revocation_cursor(self) -> str:
        return await self._reads.cursor()

    async def scan_revocations(
        self, token: str, now: int, limit: int
    ) -> tuple[list[RevocationRow], str]:
        return await self._reads.scan(token, now, limit)

    async def scan_revocation_groups(
        self, token: str, now: int, limit: int
    ) -> tuple[list[RevocationGroup], str]:
        return await self._grouped.scan(token, now, limit)

    async def revocations_since(
        self, cursor: str, now: int, limit: int
    ) -> tuple[list[RevocationRow], str] | None:
        return await self._reads.since(cursor, now, limit)

    async def revocations(self, now: int) -> list[Revocation]:
        return await self._reads.listed(now)

    async def read_snapshot(self) -> bytes | bytearray | None:
        return await self._snapshot.read()

    async def write_snapshot(
        self, make: Callable[[], Awaitable[Sequence[bytes]]], *, holder: str, every_s: float
    ) -> bool:
        return await self._snapshot.write(make, holder=holder, every_s=every_s)

    async def open_revocation_feed(self) -> StreamFeed:
        self._caller.check_open()
        feed = await open_feed(self._connector, self._keys, on_close=self._feeds.discard)
        self._feeds.add(feed)
        return feed

    async def close(self) -> None:
        if self._caller.closed:
            return
        self._caller.closed = True
        for feed in list(self._feeds):
            await feed.close()
        await close_quietly(self._client)
        self._bytes.closed = True
        await close_quietly(self._bytes.client)
        await self._connector.close()

    # --- internals ---------------------------------------------------------------------------

    def _ttl(self, expires_at: int) -> int:
        return max(expires_at - int(self._clock.now()), 0) + TTL_MARGIN_S

    async def _replicated(
        self, script: AsyncScript, keys: list[str], args: list[str | int], *, late: Any
    ) -> Any:
        """Run a write script; with `store.redis_wait_replicas` > 0, followed by WAIT on the
        same connection (one pipeline), and acknowledged only when that many replicas have
        it. Redis replicates asynchronously: without this, a failover can lose a rotation
        the client was already given (its successor is then unknown to the family, and a
        later presentation is refused as reuse). Fewer replicas than asked: the write may or
        may not survive, so StoreUnavailableError; a retry of a rotation is safe either way
        (GRACE with the same successor, or a fresh rotation). `late` is the script's answer
        past its deadline, which wrote nothing and needs no WAIT."""
        need = self._connector.wait_replicas
        if need == 0:
            return await self._call(script(keys=keys, args=args))
        async with self._client.pipeline(transaction=False) as pipe:  # see Caller.fan_out
            # Queued, sent by execute(); redis-py's annotation omits the pipelines it supports.
            await script(keys=keys, args=args, client=pipe)  # type: ignore[arg-type]
            pipe.wait(need, max(int(self.timeout_s * 500), 1))  # under the socket timeout
            reply, acked = await self._call(pipe.execute())
        if reply != late and int(acked) < need:
            log.warning("redis write not acknowledged by %d replica(s) in time", need)
            raise StoreUnavailableError()
        return reply

    async def _call(self, pending: Awaitable[_T]) -> _T:
        return await self._caller.call(pending)


__all__ = ["RedisTokenStore"]
