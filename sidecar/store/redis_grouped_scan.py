"""The first load's scan of a Redis store (`scan_revocation_groups`, issue 16): every
partition's live revocations, grouped by (kind, issuer), keys as UTF-8 bytes.

A first start reads every live revocation once; at a million that read is most of the start.
So this reads ZSCAN pages on a client of its own that leaves replies as bytes and skips
redis-py's per-pair reply callback (`ZSCAN` -> the raw `[cursor, [member, score, ...]]`), and
takes each page apart with C-level operations: the members and scores are the reply's two
slices, the horizons one `map(int)`, and when every member of a page shares one
`kind issuer ` prefix (the usual case: one issuer, one kind per partition page) the keys are
one split of the joined page, checked by counting separators (a member of another shape, a
key with a space or newline, makes the counts differ). A page mixing prefixes, or holding a
member of another shape, is split member by member with `decode_row`'s rules. Keys needing
percent-decoding are decoded one by one, as `decode_row` does. Grouping on the server (a Lua
script) was tried: it halves nothing here (redis-py's parser is not the cost) and costs the
server ~2 µs a row to turn the reply into Lua values, which made the start slower.

Several partitions are read per call (one pipeline on one server, concurrently on a Cluster,
each on the primary owning it): a call asks `limit // parts` entries of each of the first
`parts` unfinished partitions, `parts` as many as leave each at least `_PART_ROWS`, so pages
stay about `limit` rows whatever the layout.

The guarantees are `scan_revocations`': ZSCAN returns every member present for the whole scan
at least once (possibly twice), and what is written meanwhile is read after the cursor taken
before the scan. The token is every read partition's ZSCAN cursor, comma-separated, "-" for a
finished one.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import itemgetter
from typing import Any
from urllib.parse import unquote

from sidecar.store.base import RevocationGroup, RevocationKind
from sidecar.store.redis_driver import Caller
from sidecar.store.redis_keys import Partition, unquote_issuer
from sidecar.store.revocation_pages import SEP as _SEP
from sidecar.store.revocation_pages import PackedKeys

# The fewest entries asked of one partition per call when several are read at once.
_PART_ROWS = 500
_DONE = "-"
_KINDS: dict[bytes, RevocationKind] = {b"jti": "jti", b"family": "family"}


class GroupedScan:
    """`scan_revocation_groups` over `parts` (every partition, then version 1's keys), on
    `caller`, whose client must answer in bytes (`RedisConnector.client(decode=False)`)."""

    def __init__(self, caller: Caller, parts: tuple[Partition, ...]) -> None:
        self._caller = caller
        self._parts = parts
        caller.client.set_response_callback("ZSCAN", _raw)

    async def scan(self, token: str, now: int, limit: int) -> tuple[list[RevocationGroup], str]:
        cursors = token.split(",") if token else ["0"] * len(self._parts)
        if len(cursors) != len(self._parts) or not all(c == _DONE or c.isdigit() for c in cursors):
            raise ValueError("not a scan token of this store")
        todo = [i for i, c in enumerate(cursors) if c != _DONE]
        todo = todo[: max(1, min(len(todo), limit // _PART_ROWS))]
        count = max(1, limit // len(todo))
        at = {self._parts[i]: cursors[i] for i in todo}

        def page(client: Any, part: Partition) -> Any:
            return client.execute_command("ZSCAN", part.revoked, at[part], "COUNT", count)

        replies = await self._caller.fan_out([self._parts[i] for i in todo], page)
        groups: list[RevocationGroup] = []
        for i, (cursor, flat) in zip(todo, replies, strict=True):
            cursors[i] = cursor.decode() if int(cursor) else _DONE
            groups += _groups(flat[0::2], flat[1::2], now)
        return groups, "" if all(c == _DONE for c in cursors) else ",".join(cursors)


def _raw(response: Any, **_: Any) -> Any:
    return response


def _groups(members: list[bytes], scores: list[bytes], now: int) -> list[RevocationGroup]:
    """One page's members and scores as groups of the live ones (`until > now`, the score
    truncated to an integer as `decode_row`'s reader does)."""
    try:
        untils = list(map(int, scores))
    except ValueError:  # a score that is not an integer: not one this store writes
        untils = [int(float(score)) for score in scores]
    if untils and min(untils) <= now:
        live = [(m, u) for m, u in zip(members, untils, strict=True) if u > now]
        members, untils = [m for m, _ in live], [u for _, u in live]
    if not members:
        return []
    first = members[0]
    end = first.find(b" ", first.find(b" ") + 1) + 1
    prefix, n = first[:end], len(members)
    blob = b"\n" + b"\n".join(members)
    if end and blob.count(b"\n") == n and blob.count(b"\n" + prefix) == n:
        if blob.count(b" ") == 2 * n:  # every member is `prefix key`, no key has a space
            # The keys joined by 0xFF, as the revocation set takes them (PackedKeys); as a
            # list when one needs decoding or holds 0xFF (not written by this code). Each
            # key is its member past the prefix's length (one C-level slice a member: a
            # `replace` of the prefix costs three times as much, a search per member).
            keys: Sequence[bytes] = list(map(itemgetter(slice(end, None)), members))
            packed = _SEP.join(keys)
            if b"%" not in packed and packed.count(_SEP) == n - 1:
                keys = PackedKeys(packed, n)
            group = _group(prefix[:-1], keys, untils)
            return [] if group is None else [group]
    return _mixed(members, untils)


def _mixed(members: list[bytes], untils: list[int]) -> list[RevocationGroup]:
    """Member by member, with `decode_row`'s rules (three parts split on spaces)."""
    found: dict[bytes, tuple[list[bytes], list[int]]] = {}
    for member, until in zip(members, untils, strict=True):
        parts = member.split(b" ")
        if len(parts) == 3:
            keys, horizons = found.setdefault(parts[0] + b" " + parts[1], ([], []))
            keys.append(parts[2])
            horizons.append(until)
    groups = (_group(prefix, keys, horizons) for prefix, (keys, horizons) in found.items())
    return [group for group in groups if group is not None]


def _group(prefix: bytes, keys: Sequence[bytes], untils: list[int]) -> RevocationGroup | None:
    """`kind issuer` (as stored) and its keys (as stored) as a group; None for a kind this
    store does not know (`decode_row` drops it too)."""
    kind_text, _, issuer = prefix.partition(b" ")
    kind = _KINDS.get(kind_text)
    if kind is None:
        return None
    if not isinstance(keys, PackedKeys) and b"%" in b"".join(keys):
        keys = [
            unquote(key.decode()).encode("utf-8", "surrogatepass") if b"%" in key else key
            for key in keys
        ]
    return (kind, unquote_issuer(issuer.decode()), keys, untils)
