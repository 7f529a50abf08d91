"""A `TokenStore` in Redis, shared by every sidecar of a fleet (issue 3).

Usage: `store = RedisTokenStore(RedisConnector(settings), clock=clock)`; nothing connects
until the first call; `await store.close()`.

* Atomicity: every write is one Lua script (`redis_scripts`), run with EVALSHA
  (`register_script` loads it again after a server restart or failover). Rotation, grace and
  reuse detection are decided inside the script, so two sidecars presenting one refresh token
  at the same instant see exactly one ROTATED, and a SIGKILLed sidecar cannot leave half a
  rotation behind.
* Layout (`redis_keys`): families are hashes keyed by family id; revocations are members
  `(kind, iss, key)` of one sorted set scored by `expires_at`; never token text.
* Expiry: every key has a TTL (families: `expires_at` plus a margin; the sets: their latest
  entry plus the margin; the feed: a day after its last write), and `revocations(now)` purges
  expired revocations and ended families, so state never outgrows what is live.
* Reading at scale (issue 16): a full load is a ZSCAN in pages; afterwards a sidecar reads
  only the feed entries after its cursor (`revocations_since`, script SINCE), which also tells
  when the stream can no longer vouch for them (trimmed past the cursor, or lost): then the
  sidecar loads everything again. Needs Redis >= 7.0 (XINFO's max-deleted-entry-id).
* Propagation: every revocation write appends `(member, expires_at)` to a stream in the same
  script. `open_revocation_feed` reads it with XREAD BLOCK on a dedicated connection from the
  position it found on opening, so delivery is gap-free while connected; the consumer reloads
  `revocations(now)` after opening (and after every reconnection).
* Deadlines (issue 13): every write passes its `deadline_ms` to its script, which does nothing
  past it (server `TIME`) and answers `late`, raised as StoreDeadlineError.
* Identity: `{prefix}:epoch` is set once (SET NX); a Redis that lost its data has none, or one
  a sidecar set after the loss, so the sidecars notice and write back their revocations.
* Failure: every driver error (connection refused or lost, timeout, cluster down, a failover
  in progress, an error reply) becomes StoreUnavailableError with a generic message; the cause
  is chained for operators and logged without values.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import traceback
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any, TypeVar

from redis.commands.core import AsyncScript
from redis.exceptions import RedisClusterException, RedisError, ResponseError

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
    group_rows,
)
from sidecar.store.redis_connect import RedisClient, RedisConnector
from sidecar.store.redis_keys import (
    FAMILY_FIELDS,
    FAMILY_REVOCATION_FIELD,
    KeyLayout,
    decode_member,
    decode_row,
    encode_member,
)

log = logging.getLogger(__name__)
_T = TypeVar("_T")

# Families and revocation sets outlive their last entry by this much (clock skew between
# sidecars; a REVOKED answer is as good as UNKNOWN after the end anyway).
TTL_MARGIN_S = 300
# The feed only has to cover the instant between a write and every reader's next XREAD.
FEED_MAXLEN = 10_000
FEED_TTL_S = 86_400
# How long one XREAD waits server-side before asking again (also bounds the detection of a
# silently dead connection: the socket read timeout is this plus `redis_timeout_s`).
FEED_BLOCK_S = 5.0
PURGE_BATCH = 1_000
# Revocations written back per script call (issue 13), so one call stays short.
RESTORE_BATCH = 500
_DRIVER_ERRORS = (RedisError, RedisClusterException, OSError, asyncio.TimeoutError)
_CONNECTION_MODULE = os.path.join("redis", "asyncio", "connection.py")


def _driver_failure(exc: BaseException) -> bool:
    """A driver error, or a write on a connection the driver closed under it (issue 16).

    redis-py 8.1.0 lets a write on a connection that another task just disconnected (its
    cluster client does that when it re-reads the topology after a primary died) escape as
    AttributeError ("'NoneType' object has no attribute 'writelines'") or TypeError instead
    of ConnectionError (redis/redis-py#4287). The command was never sent, so UNAVAILABLE is
    the exact answer. Only those two types raised inside redis-py's connection module count:
    any other AttributeError is a bug of ours and stays INTERNAL.
    """
    if isinstance(exc, _DRIVER_ERRORS):
        return True
    if isinstance(exc, AttributeError | TypeError):
        frames = traceback.walk_tb(exc.__traceback__)
        return any(frame.f_code.co_filename.endswith(_CONNECTION_MODULE) for frame, _ in frames)
    return False


class RedisTokenStore:
    """A `TokenStore` on redis.asyncio; see the module docstring for the guarantees."""

    def __init__(self, connector: RedisConnector, *, clock: Clock, key_prefix: str) -> None:
        self._connector = connector
        self._clock = clock
        self._keys = KeyLayout(key_prefix)
        self._client: RedisClient = connector.client()
        self._create = self._client.register_script(redis_scripts.CREATE_FAMILY)
        self._rotate = self._client.register_script(redis_scripts.ROTATE)
        self._revoke = self._client.register_script(redis_scripts.REVOKE)
        self._epoch = self._client.register_script(redis_scripts.EPOCH)
        self._purge_and_list = self._client.register_script(redis_scripts.PURGE_AND_LIST)
        self._purge = self._client.register_script(redis_scripts.PURGE)
        self._since = self._client.register_script(redis_scripts.SINCE)
        self._feeds: set[_StreamFeed] = set()
        self._closed = False

    @property
    def timeout_s(self) -> float:
        return self._connector.timeout_s

    # The next ZSCAN page is computed by Redis while this process merges the current one.
    scan_ahead = True

    async def ping(self) -> None:
        await self._call(self._client.ping())

    async def epoch(self, candidate: str, *, deadline_ms: int) -> str:
        reply: Any = await self._call(
            self._epoch(keys=[self._keys.epoch], args=[deadline_ms, candidate])
        )
        if isinstance(reply, list):
            raise StoreDeadlineError()
        return str(reply)

    async def persistence(self) -> str:
        """From CONFIG GET appendonly / appendfsync / save; "unknown" when CONFIG is renamed,
        disabled or refused by an ACL (managed Redis often does). Not through `_call`: a
        refusal here is an answer, not a failure to log on every poll."""
        self._check_open()
        found: dict[str, str] = {}
        try:
            for name in ("appendonly", "appendfsync", "save"):
                found.update(await self._client.config_get(name))  # type: ignore[arg-type]
        except ResponseError:
            return "unknown"  # the server answered, but not this command
        except _DRIVER_ERRORS as exc:
            raise StoreUnavailableError() from exc
        return _persistence_mode(found)

    async def create_family(self, family: FamilyRecord, *, deadline_ms: int) -> None:
        fields = _family_fields(family)
        fields[FAMILY_REVOCATION_FIELD] = encode_member("family", family.issuer, family.family_id)
        ttl = self._ttl(family.expires_at)
        args: list[str | int] = [deadline_ms, ttl, family.expires_at, family.family_id]
        for name, value in fields.items():
            args += [name, value]
        keys = [self._keys.family(family.family_id), self._keys.families]
        created = await self._replicated(self._create, keys, args, late=redis_scripts.LATE)
        if created == redis_scripts.LATE:
            raise StoreDeadlineError()
        if int(created) != 1:
            raise ValueError("family id already exists")

    async def get_family(self, family_id: str) -> FamilyRecord | None:
        fields: dict[str, str] = await self._call(
            self._client.hgetall(self._keys.family(family_id))  # type: ignore[arg-type]
        )
        return _family_from(fields) if fields else None

    async def rotate(self, rotation: Rotation) -> RotateResult:
        r = rotation
        keys = [self._keys.family(r.family_id), self._keys.revoked, self._keys.feed]
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
        family = _family_from(dict(zip(rest[0::2], rest[1::2], strict=True)))
        revocation = None
        if outcome is RotateOutcome.REUSED:
            revocation = Revocation("family", family.issuer, family.family_id, until)
        return RotateResult(outcome, family, revocation)

    async def revoke(self, revocation: Revocation, *, deadline_ms: int) -> None:
        await self.restore((revocation,), deadline_ms=deadline_ms)

    async def restore(self, revocations: Sequence[Revocation], *, deadline_ms: int) -> int:
        """In batches of RESTORE_BATCH, each one script (one step); a failure part way
        leaves the earlier batches written, which is what a retry would write again."""
        written = 0
        for start in range(0, len(revocations), RESTORE_BATCH):
            batch = revocations[start : start + RESTORE_BATCH]
            written += await self._revoke_batch(batch, deadline_ms)
        return written

    async def _revoke_batch(self, batch: Sequence[Revocation], deadline_ms: int) -> int:
        keys = [self._keys.revoked, self._keys.feed]
        latest = max(r.expires_at for r in batch)
        args: list[str | int] = [deadline_ms, self._ttl(latest), FEED_MAXLEN, FEED_TTL_S]
        for r in batch:
            family_index = 0
            if r.kind == "family":
                keys.append(self._keys.family(r.key))
                family_index = len(keys)
            args += [encode_member(r.kind, r.issuer, r.key), r.expires_at, family_index]
        done = await self._call(self._revoke(keys=keys, args=args))
        if done == redis_scripts.LATE:
            raise StoreDeadlineError()
        return int(done)

    async def purge(self, now: int) -> None:
        keys = [self._keys.revoked, self._keys.families]
        args: list[str | int] = [now, self._keys.family(""), PURGE_BATCH]
        await self._call(self._purge(keys=keys, args=args))

    async def count_revocations(self, from_expires_at: int) -> int | None:
        """ZCOUNT: O(log n)."""
        found = await self._call(self._client.zcount(self._keys.revoked, from_expires_at, "+inf"))
        return int(found)

    async def revocation_cursor(self) -> str:
        newest: Any = await self._call(self._client.xrevrange(self._keys.feed, count=1))
        return str(newest[0][0]) if newest else "0-0"

    async def scan_revocations(
        self, token: str, now: int, limit: int
    ) -> tuple[list[RevocationRow], str]:
        """ZSCAN over the live set: every member present throughout is returned at least
        once; what is written during the scan is caught by `revocations_since` after it."""
        cursor, pairs = await self._call(
            self._client.zscan(self._keys.revoked, int(token or 0), count=limit)
        )
        rows: list[RevocationRow] = []
        for member, score in pairs:
            until = int(score)
            if until > now:
                row = decode_row(str(member), until)
                if row is not None:
                    rows.append(row)
        return rows, (str(cursor) if int(cursor) else "")

    async def scan_revocation_groups(
        self, token: str, now: int, limit: int
    ) -> tuple[list[RevocationGroup], str]:
        """`scan_revocations`' pages, grouped (whatever the key layout, so this follows any
        change to how the set is scanned; the per-row decode is `decode_row`'s)."""
        rows, token = await self.scan_revocations(token, now, limit)
        return group_rows(rows), token

    async def revocations_since(
        self, cursor: str, now: int, limit: int
    ) -> tuple[list[RevocationRow], str] | None:
        """From the feed stream: its ids are the positions (see redis_scripts.SINCE)."""
        reply: Any = await self._call(self._since(keys=[self._keys.feed], args=[cursor, limit]))
        if reply[0] != "ok":
            return None
        rows: list[RevocationRow] = []
        last = cursor
        for entry_id, fields in reply[1]:
            last = str(entry_id)
            found = dict(zip(fields[0::2], fields[1::2], strict=True))
            revocation = _revocation_from(found)
            if revocation is not None and revocation.expires_at > now:
                r = revocation
                rows.append((r.kind, r.issuer, r.key, r.expires_at))
        return rows, last

    async def revocations(self, now: int) -> list[Revocation]:
        keys = [self._keys.revoked, self._keys.families]
        args: list[str | int] = [now, self._keys.family(""), PURGE_BATCH]
        reply: list[str] = await self._call(self._purge_and_list(keys=keys, args=args))
        found = []
        for member, score in zip(reply[0::2], reply[1::2], strict=True):
            revocation = decode_member(member, int(float(score)))
            if revocation is not None:
                found.append(revocation)
        return found

    async def open_revocation_feed(self) -> _StreamFeed:
        """Fix the feed position (the newest entry now), so nothing written later is missed."""
        self._check_open()
        client = self._connector.client(read_timeout_s=FEED_BLOCK_S + 2.0)
        try:
            newest: Any = await self._call(client.xrevrange(self._keys.feed, count=1))
        except StoreUnavailableError:
            await _close_quietly(client)
            raise
        feed = _StreamFeed(client, self._keys.feed, newest[0][0] if newest else "0-0", self)
        self._feeds.add(feed)
        return feed

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for feed in list(self._feeds):
            await feed.close()
        await _close_quietly(self._client)
        await self._connector.close()

    # --- internals ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailableError()

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
        pipe = self._client.pipeline(transaction=False)
        # Queued, sent by execute(); redis-py's annotation omits the pipelines it supports.
        await script(keys=keys, args=args, client=pipe)  # type: ignore[arg-type]
        pipe.wait(need, max(int(self.timeout_s * 500), 1))  # under the socket timeout
        reply, acked = await self._call(pipe.execute())
        if reply != late and int(acked) < need:
            log.warning("redis write not acknowledged by %d replica(s) in time", need)
            raise StoreUnavailableError()
        return reply

    async def _call(self, pending: Awaitable[_T]) -> _T:
        """Await a driver call; every driver failure becomes StoreUnavailableError."""
        if self._closed:
            if asyncio.iscoroutine(pending):
                pending.close()  # never started: do not leave an un-awaited coroutine
            raise StoreUnavailableError()
        try:
            return await pending
        except Exception as exc:
            if not _driver_failure(exc):
                raise
            log.warning("redis token store call failed: %s", type(exc).__name__)
            raise StoreUnavailableError() from exc


class _StreamFeed:
    """XREAD BLOCK from a fixed position on a connection of its own (see RevocationFeed)."""

    def __init__(self, client: RedisClient, key: str, last_id: str, store: RedisTokenStore):
        self._client = client
        self._key = key
        self._last_id = last_id
        self._store = store
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[Revocation]:
        block_ms = int(FEED_BLOCK_S * 1000)
        while True:
            if self._closed:
                raise StoreUnavailableError()
            try:
                reply: Any = await self._client.xread(
                    {self._key: self._last_id}, count=500, block=block_ms
                )
            except Exception as exc:
                if not _driver_failure(exc):
                    raise
                if not self._closed:
                    log.warning("revocation feed lost: %s", type(exc).__name__)
                raise StoreUnavailableError() from exc
            for _stream, entries in _entries(reply):
                for entry_id, fields in entries:
                    self._last_id = entry_id
                    revocation = _revocation_from(fields)
                    if revocation is not None:
                        yield revocation

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._store._feeds.discard(self)
        await _close_quietly(self._client)


def _persistence_mode(config: dict[str, str]) -> str:
    """The store's durability, from its CONFIG (see `TokenStore.persistence`)."""
    if "appendonly" not in config or "save" not in config:
        return "unknown"
    if config["appendonly"] == "yes":
        fsync = config.get("appendfsync", "")
        return f"aof-{fsync}" if fsync in ("always", "everysec", "no") else "unknown"
    return "rdb" if config["save"].strip() else "none"


def _entries(reply: Any) -> list[tuple[str, list[tuple[str, dict[str, str]]]]]:
    """XREAD's reply as a list (RESP2: list of pairs; RESP3: a map)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return [(stream, entries) for stream, entries in reply.items()]
    return [(stream, entries) for stream, entries in reply]


def _revocation_from(fields: dict[str, str]) -> Revocation | None:
    member, expires_at = fields.get("r"), fields.get("e", "")
    if member is None or not expires_at.lstrip("-").isdigit():
        return None
    return decode_member(member, int(expires_at))


def _family_fields(family: FamilyRecord) -> dict[str, str | int]:
    return {
        "family_id": family.family_id,
        "issuer": family.issuer,
        "subject": family.subject,
        "audience": json.dumps(list(family.audience)),
        "scope": family.scope,
        "client_id": family.client_id,
        "claims_json": family.claims_json,
        "created_at": family.created_at,
        "expires_at": family.expires_at,
        "current_jti": family.current_jti,
        "revoked": int(family.revoked),
        "previous_jti": family.previous_jti,
        "rotated_at": family.rotated_at,
    }


def _family_from(fields: dict[str, str]) -> FamilyRecord:
    f = {name: fields.get(name, "") for name in FAMILY_FIELDS}
    return FamilyRecord(
        family_id=f["family_id"],
        issuer=f["issuer"],
        subject=f["subject"],
        audience=tuple(json.loads(f["audience"] or "[]")),
        scope=f["scope"],
        client_id=f["client_id"],
        claims_json=f["claims_json"],
        created_at=int(f["created_at"] or 0),
        expires_at=int(f["expires_at"] or 0),
        current_jti=f["current_jti"],
        revoked=f["revoked"] == "1",
        previous_jti=f["previous_jti"],
        rotated_at=int(f["rotated_at"] or 0),
    )


async def _close_quietly(client: RedisClient) -> None:
    try:
        await client.aclose()
    except _DRIVER_ERRORS:
        pass  # closing a connection to a dead server: nothing left to release


__all__ = ["RedisTokenStore"]
