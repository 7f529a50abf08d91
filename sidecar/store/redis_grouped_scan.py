"""The first load's scan of a Redis store (`scan_revocation_groups`, issue 16): every
partition's live revocations, grouped by (kind, issuer), keys as UTF-8 bytes.

A first start reads every live revocation once; at a million that read is most of the start,
and on a pure-Python RESP parser (no hiredis) every reply element costs about a microsecond.
So the grouping is done by the server (redis_scripts.SCAN_GROUPS, one ZSCAN page per call):
a page comes back as a few strings per (kind, issuer) instead of two elements per row, and
this side splits each group's keys and horizons with one C-level split each. Only a member of
another shape than `encode_member`'s (written by something else) is decoded row by row,
exactly as `decode_row` does, and a key needing percent-decoding is decoded alone.

Several partitions are read per call (one pipeline on one server, concurrently on a Cluster,
each on the primary owning it): a call asks `limit // parts` entries of each of the first
`parts` unfinished partitions, `parts` as many as leave each at least `_PART_ROWS`, so pages
stay about `limit` rows whatever the layout and a call's fixed cost is spread over hundreds.

The guarantees are `scan_revocations`': ZSCAN returns every member present for the whole scan
at least once (possibly twice), and what is written meanwhile is read after the cursor taken
before the scan. The token is every read partition's ZSCAN cursor, comma-separated, "-" for a
finished one.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from sidecar.store import redis_scripts
from sidecar.store.base import RevocationGroup, RevocationKind, group_rows
from sidecar.store.redis_driver import Caller
from sidecar.store.redis_keys import Partition, decode_row, unquote_issuer

# The fewest entries asked of one partition per call when several are read at once.
_PART_ROWS = 500
_DONE = "-"
_KINDS: dict[str, RevocationKind] = {"jti": "jti", "family": "family"}


class GroupedScan:
    """`scan_revocation_groups` over `parts` (every partition, then version 1's keys)."""

    def __init__(self, caller: Caller, parts: tuple[Partition, ...]) -> None:
        self._caller = caller
        self._parts = parts
        self._script = caller.client.register_script(redis_scripts.SCAN_GROUPS)

    async def scan(self, token: str, now: int, limit: int) -> tuple[list[RevocationGroup], str]:
        cursors = token.split(",") if token else ["0"] * len(self._parts)
        if len(cursors) != len(self._parts) or not all(c == _DONE or c.isdigit() for c in cursors):
            raise ValueError("not a scan token of this store")
        todo = [i for i, c in enumerate(cursors) if c != _DONE]
        todo = todo[: max(1, min(len(todo), limit // _PART_ROWS))]
        count = max(1, limit // len(todo))
        at = {self._parts[i]: cursors[i] for i in todo}

        def page(client: Any, part: Partition) -> Any:
            args: list[str | int] = [at[part], count, now]
            return self._script(keys=[part.revoked], args=args, client=client)

        replies = await self._caller.fan_out([self._parts[i] for i in todo], page)
        groups: list[RevocationGroup] = []
        for i, reply in zip(todo, replies, strict=True):
            cursor = str(reply[0])
            cursors[i] = cursor if int(cursor) else _DONE
            groups += _groups(reply)
        return groups, "" if all(c == _DONE for c in cursors) else ",".join(cursors)


def _groups(reply: list[Any]) -> list[RevocationGroup]:
    """One SCAN_GROUPS reply as groups (see its comment for the shape)."""
    found: list[RevocationGroup] = []
    for at in range(2, len(reply), 3):
        prefix, keys_text, untils_text = reply[at : at + 3]
        kind_text, issuer = str(prefix)[:-1].split(" ")
        kind = _KINDS.get(kind_text)
        if kind is None:
            continue  # decode_row's answer for an unknown kind
        untils = list(map(int, str(untils_text).split(" ")))
        if "%" in keys_text:
            keys = [unquote(k).encode("utf-8", "surrogatepass") for k in keys_text.split("\n")]
        else:
            keys = str(keys_text).encode("utf-8", "surrogatepass").split(b"\n")
        if len(keys) != len(untils):
            raise ValueError("malformed SCAN_GROUPS reply")
        found.append((kind, unquote_issuer(issuer), keys, untils))
    rest = reply[1]
    rows = (decode_row(str(m), int(u)) for m, u in zip(rest[0::2], rest[1::2], strict=True))
    return found + group_rows(row for row in rows if row is not None)
