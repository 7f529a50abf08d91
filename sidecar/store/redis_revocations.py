"""Reading the revocations of every partition (`RedisTokenStore`'s read side, issue 16).

A sidecar loads the live set once, in pages, then reads only what was written since. With the
keys split over partitions (`redis_keys`), every position is one per partition:

* the cursor (`revocation_cursor`, `revocations_since`) is the id of the last feed entry read
  in each partition's stream, comma-separated, in partition order, the version-1 stream
  last; each stream is checked on its own (script SINCE), so a stream trimmed past its
  cursor or lost with a failed-over shard answers None and the sidecar reads everything
  again, exactly as with one stream;
* a scan token is `<partition index>:<ZSCAN cursor>`, partition after partition;
* `count_revocations` is the sum of every partition's ZCOUNT (the sidecar compares it with its
  mirror);
* each partition is also checked on its own (issue 16), so a shard that lost writes cannot be
  hidden by growth in the others: `since` reads, in the same step as each partition's feed,
  how many revocations it holds from two minute boundaries at least `FLOOR_MARGIN_S` ahead.
  Nothing may lower those counts but a loss: only a purge removes revocations (those with
  `expires_at <= now`, by clocks at most `SKEW_S` apart) and a write only adds one or
  lengthens it. A later `since` that finds a partition holding fewer from a boundary it
  counted before answers None (read everything again, and write back: tokens/store_sync.py);
  the counts start afresh at that full read's `cursor`, so one loss is reported once. Two
  feed reads share a boundary only when less than about a minute apart: every poll at the
  default `store.sync_interval_s` (5 s); with an interval over a minute only the sum is
  compared.

The version-1 keys (`KeyLayout.legacy`) are read as one more partition, never written or
purged here: version-1 sidecars still running keep writing them, and their TTL ends them.
"""

from __future__ import annotations

from typing import Any

from sidecar.store import redis_scripts
from sidecar.store.base import Revocation, RevocationRow
from sidecar.store.redis_codec import revocation_from
from sidecar.store.redis_driver import Caller
from sidecar.store.redis_keys import KeyLayout, Partition, decode_member, decode_row

PURGE_BATCH = 1_000
_START = "0-0"
# How far two sidecars' clocks may differ (tokens/store_sync.py's SKEW_MARGIN_S), and how far
# ahead of `now` a boundary of the per-partition check starts: past the skew, with a margin
# for the next check to come before `now` catches up with it.
SKEW_S = 60
FLOOR_MARGIN_S = 2 * SKEW_S


class RevocationReads:
    """The read side of one store's revocations; see the module docstring."""

    def __init__(self, caller: Caller, keys: KeyLayout) -> None:
        self._caller = caller
        self._keys = keys
        client = caller.client
        self._purge_script = client.register_script(redis_scripts.PURGE)
        self._purge_and_list = client.register_script(redis_scripts.PURGE_AND_LIST)
        self._since = client.register_script(redis_scripts.SINCE)
        # Every partition, then the version-1 keys (read only).
        self.read_parts: tuple[Partition, ...] = (*keys.partitions, keys.legacy)
        # Boundary -> how many revocations each partition held from it at the last `since`.
        self._floors: dict[int, list[int]] = {}

    async def newest_ids(self) -> list[str]:
        """The id of the newest entry of every partition's stream ("0-0" when empty)."""
        found = await self._caller.fan_out(
            self.read_parts, lambda c, p: c.xrevrange(p.feed, count=1)
        )
        return [str(newest[0][0]) if newest else _START for newest in found]

    async def cursor(self) -> str:
        """Where a full read's follow-up starts. The per-partition counts start afresh
        with it: what the full read loads is what the store holds now."""
        self._floors = {}
        return ",".join(await self.newest_ids())

    async def count(self, from_expires_at: int) -> int:
        """The sum of every partition's ZCOUNT: O(partitions log n)."""
        found = await self._caller.fan_out(
            self.read_parts, lambda c, p: c.zcount(p.revoked, from_expires_at, "+inf")
        )
        return sum(int(n) for n in found)

    async def scan(self, token: str, now: int, limit: int) -> tuple[list[RevocationRow], str]:
        """One ZSCAN page of one partition; the next token moves on to the next partition
        when this one is done. Every member present throughout is returned at least once;
        what is written during the scan is caught by `since` after it."""
        index, _, position = token.partition(":")
        part = int(index or 0)
        if not 0 <= part < len(self.read_parts):
            raise ValueError("not a scan token of this store")
        key = self.read_parts[part].revoked
        cursor, pairs = await self._caller.call(
            self._caller.client.zscan(key, int(position or 0), count=limit)
        )
        rows: list[RevocationRow] = []
        for member, score in pairs:
            until = int(score)
            if until > now:
                row = decode_row(str(member), until)
                if row is not None:
                    rows.append(row)
        if int(cursor):
            return rows, f"{part}:{cursor}"
        return rows, (f"{part + 1}:0" if part + 1 < len(self.read_parts) else "")

    async def since(
        self, cursor: str, now: int, limit: int
    ) -> tuple[list[RevocationRow], str] | None:
        """Up to `limit` writes per partition after `cursor` (see redis_scripts.SINCE); None
        when any partition's stream cannot vouch for its own part."""
        ids = cursor.split(",")
        if len(ids) != len(self.read_parts):
            return None  # not a cursor of this layout: read everything
        position = dict(zip(self.read_parts, ids, strict=True))
        first = -(-(now + FLOOR_MARGIN_S) // 60) * 60
        bounds = (first, first + 60)

        def read(client: Any, part: Partition) -> Any:
            keys = [part.feed, part.revoked]
            args: list[str | int] = [position[part], limit, *bounds]
            return self._since(keys=keys, args=args, client=client)

        replies = await self._caller.fan_out(self.read_parts, read)
        if any(reply[0] != "ok" for reply in replies):
            return None
        if not self._held_all(bounds, replies[: len(self._keys.partitions)]):
            return None
        rows: list[RevocationRow] = []
        after = []
        for last, reply in zip(ids, replies, strict=True):
            for entry_id, fields in reply[1]:
                last = str(entry_id)
                found = dict(zip(fields[0::2], fields[1::2], strict=True))
                revocation = revocation_from(found)
                if revocation is not None and revocation.expires_at > now:
                    r = revocation
                    rows.append((r.kind, r.issuer, r.key, r.expires_at))
            after.append(last)
        return rows, ",".join(after)

    def _held_all(self, bounds: tuple[int, int], replies: list[Any]) -> bool:
        """Whether every partition still holds at least as many revocations from each
        boundary as when last counted from it (see the module docstring); the counts are
        kept for the next call either way. The version-1 keys are not checked (their
        sidecars manage them)."""
        held = True
        floors: dict[int, list[int]] = {}
        for i, bound in enumerate(bounds):
            counts = [int(reply[2 + i]) for reply in replies]
            before = self._floors.get(bound)
            if before is not None and any(n < f for n, f in zip(counts, before, strict=True)):
                held = False
            floors[bound] = counts
        self._floors = floors
        return held

    async def purge(self, now: int) -> None:
        """Every partition's expired revocations and ended families (not version 1's)."""

        def purge(client: Any, part: Partition) -> Any:
            keys = [part.revoked, part.families]
            args: list[str | int] = [now, part.family(""), PURGE_BATCH]
            return self._purge_script(keys=keys, args=args, client=client)

        await self._caller.fan_out(self._keys.partitions, purge)

    async def listed(self, now: int) -> list[Revocation]:
        """Purge, then every revocation in force (version 1's included)."""

        def purge_and_list(client: Any, part: Partition) -> Any:
            keys = [part.revoked, part.families]
            args: list[str | int] = [now, part.family(""), PURGE_BATCH]
            return self._purge_and_list(keys=keys, args=args, client=client)

        replies = await self._caller.fan_out(self._keys.partitions, purge_and_list)
        legacy = self._keys.legacy.revoked
        old = await self._caller.call(
            self._caller.client.zrangebyscore(legacy, f"({now}", "+inf", withscores=True)
        )
        found = []
        pairs = [(m, s) for reply in replies for m, s in zip(reply[0::2], reply[1::2], strict=True)]
        for member, score in [*pairs, *old]:
            revocation = decode_member(str(member), int(float(score)))
            if revocation is not None:
                found.append(revocation)
        return found
