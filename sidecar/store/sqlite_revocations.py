"""The SQLite store's `revocations` table: upserts that take positions, and the three reads
(the paged scan, the changes since a cursor, everything live) plus the purge.

Each revocation write that adds an entry or lengthens its horizon takes the next position in
the `sequence` table (schema v4); a write that changes nothing takes none (issue 16). Every
function runs on the store's worker thread, inside the caller's transaction where it writes.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from array import array
from collections.abc import Iterable, Sequence

from sidecar.store.records import Revocation, RevocationGroup, RevocationRow
from sidecar.store.revocation_pages import PackedKeys
from sidecar.store.sqlite_transaction import Transaction

# Writes only when the entry is new or its horizon grows (then it takes a new position).
_UPSERT_REVOCATION = (
    "INSERT INTO revocations (kind, issuer, key, expires_at, seq) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (kind, issuer, key) DO UPDATE"
    " SET expires_at = excluded.expires_at, seq = excluded.seq"
    " WHERE excluded.expires_at > revocations.expires_at"
)
_SCAN_FIRST = (
    "SELECT kind, issuer, key, expires_at FROM revocations WHERE expires_at > ?"
    " ORDER BY kind, issuer, key LIMIT ?"
)
_SCAN_AFTER = (
    "SELECT kind, issuer, key, expires_at FROM revocations"
    " WHERE (kind, issuer, key) > (?, ?, ?) AND expires_at > ?"
    " ORDER BY kind, issuer, key LIMIT ?"
)
_SELECT_SEQUENCE = "SELECT value FROM sequence WHERE name = 'revocations'"
_SELECT_AFTER = (
    "SELECT kind, issuer, key, expires_at, seq FROM revocations WHERE seq > ? ORDER BY seq LIMIT ?"
)

# The first load's scan (`scan_groups`): one (kind, issuer) at a time, in primary key order,
# keys as their UTF-8 bytes. Each page is built by SQLite as one row (`_GROUP_PAGE`: the keys
# joined by 0xFF, the horizons as 16 hex digits each, and the count), so this
# process makes one split and one `fromhex` a page instead of three objects a row (issue 16,
# stop 20: 0.40 instead of 0.65 CPU-s for a million, the store's thread and the loop's
# together). A page whose keys hold 0xFF themselves (the split would not give `count` keys;
# only bytes written around this code can) is read again row by row (`_GROUP_KEYS`). The next
# page starts after the greatest key's bytes (`CAST(? AS TEXT)` keeps them as they are,
# whatever they are: bytes compare as SQLite's BINARY collation compares text).
_FIRST_GROUP = "SELECT kind, issuer FROM revocations ORDER BY kind, issuer LIMIT 1"
_NEXT_GROUP = (
    "SELECT kind, issuer FROM revocations WHERE (kind, issuer) > (?, ?)"
    " ORDER BY kind, issuer LIMIT 1"
)
_GROUP_KEYS = (
    "SELECT CAST(key AS BLOB), expires_at FROM revocations"
    " WHERE kind = ? AND issuer = ? AND key > CAST(? AS TEXT) AND expires_at > ?"
    " ORDER BY key LIMIT ?"
)
_GROUP_PAGE = (
    "SELECT CAST(group_concat(k, x'ff') AS BLOB), group_concat(h, ''), count(*) FROM ("
    "SELECT CAST(key AS BLOB) AS k, printf('%016x', expires_at) AS h FROM revocations"
    " WHERE kind = ? AND issuer = ? AND key > CAST(? AS TEXT) AND expires_at > ?"
    " ORDER BY key LIMIT ?)"
)
# A group's first page starts from its first key (which may be "").
_GROUP_KEYS_FIRST = _GROUP_KEYS.replace("key >", "key >=")
_GROUP_PAGE_FIRST = _GROUP_PAGE.replace("key >", "key >=")


def put_revocations(db: sqlite3.Connection, revocations: Iterable[Revocation]) -> int:
    """Upsert inside the caller's transaction; each row that changes takes the next position.
    Returns how many changed (were absent or had a shorter horizon)."""
    position = sequence(db)
    written = 0
    for r in revocations:
        row = (r.kind, r.issuer, r.key, r.expires_at, position + written + 1)
        if db.execute(_UPSERT_REVOCATION, row).rowcount > 0:
            written += 1
    if written:
        db.execute(
            "UPDATE sequence SET value = ? WHERE name = 'revocations'", (position + written,)
        )
    return written


def sequence(db: sqlite3.Connection) -> int:
    """The position of the newest revocation write."""
    value: int = db.execute(_SELECT_SEQUENCE).fetchone()[0]
    return value


def scan(
    db: sqlite3.Connection, token: str, now: int, limit: int
) -> tuple[list[RevocationRow], str]:
    """One page in primary-key order (keyset pagination: the token is the last key, as JSON),
    so the scan reads the table sequentially; what is written meanwhile is read after the
    cursor taken before the scan."""
    if token:
        found = db.execute(_SCAN_AFTER, (*json.loads(token), now, limit)).fetchall()
    else:
        found = db.execute(_SCAN_FIRST, (now, limit)).fetchall()
    # Rows of (kind, issuer, key, expires_at) as the STRICT table holds them.
    rows: list[RevocationRow] = found
    return rows, (json.dumps(found[-1][:3]) if len(found) == limit else "")


def scan_groups(
    db: sqlite3.Connection, token: str, now: int, limit: int
) -> tuple[list[RevocationGroup], str]:
    """Keyset pagination as `scan`, a (kind, issuer) at a time; the token is the last
    (kind, issuer) read and its last key's bytes in hex (any bytes: what the file holds)."""
    if token:
        kind, issuer, last = json.loads(token)
        after, first = bytes.fromhex(last), False
    else:
        found = db.execute(_FIRST_GROUP).fetchone()
        if found is None:
            return [], ""
        (kind, issuer), after, first = found, b"", True
    groups: list[RevocationGroup] = []
    left = limit
    while True:
        query = _GROUP_PAGE_FIRST if first else _GROUP_PAGE
        packed, hexed, count = db.execute(query, (kind, issuer, after, now, left)).fetchone()
        if count:
            keys: Sequence[bytes]
            untils: Sequence[int]
            try:
                keys = PackedKeys(packed, count)
            except ValueError:  # a key holding 0xFF: this page row by row
                rows = _GROUP_KEYS_FIRST if first else _GROUP_KEYS
                found_rows = db.execute(rows, (kind, issuer, after, now, left)).fetchall()
                keys, untils = [k for k, _ in found_rows], [u for _, u in found_rows]
                # A statement of its own: its rows are what the token must follow.
                count, greatest = len(found_rows), (found_rows[-1][0] if found_rows else b"")
            else:
                horizons = array("Q", bytes.fromhex(hexed))
                if sys.byteorder == "little":
                    horizons.byteswap()  # printed most significant digit first
                untils = horizons
                # The last key is the greatest: the aggregate reads the subquery's rows in
                # its ORDER BY (asking SQLite for `max(k)` instead costs a third more). Were
                # it ever otherwise, the token would be a smaller key of this page: the next
                # page would re-read keys (copies, merged by the set), never skip one.
                greatest = packed.rpartition(b"\xff")[2]
            if count:
                groups.append((kind, issuer, keys, untils))
            left -= count
        if not left:
            return groups, json.dumps([kind, issuer, greatest.hex()])
        following = db.execute(_NEXT_GROUP, (kind, issuer)).fetchone()
        if following is None:
            return groups, ""
        (kind, issuer), after, first = following, b"", True


def since(
    db: sqlite3.Connection, position: int, now: int, limit: int
) -> tuple[list[RevocationRow], str] | None:
    """Up to `limit` writes after `position` still in force at `now`, and the position of the
    last row looked at; None when the sequence is behind `position` (the file was replaced or
    restored from a backup)."""
    if sequence(db) < position:
        return None
    found = db.execute(_SELECT_AFTER, (position, limit)).fetchall()
    rows: list[RevocationRow] = [
        (kind, issuer, key, until) for kind, issuer, key, until, _ in found if until > now
    ]
    return rows, str(found[-1][4] if found else position)


def live(db: sqlite3.Connection, now: int) -> list[Revocation]:
    rows = db.execute(
        "SELECT kind, issuer, key, expires_at FROM revocations WHERE expires_at > ?", (now,)
    ).fetchall()
    return [Revocation(kind, issuer, key, expires_at) for kind, issuer, key, expires_at in rows]


def purge(db: sqlite3.Connection, now: int) -> None:
    """Drop expired revocations and ended families, taking the write lock only when something
    has expired: every sidecar polls this, and an unconditional DELETE would take the lock
    (and an fsync) on every poll."""
    expired = db.execute(
        "SELECT EXISTS (SELECT 1 FROM revocations WHERE expires_at <= ?)"
        " OR EXISTS (SELECT 1 FROM families WHERE expires_at <= ?)",
        (now, now),
    ).fetchone()[0]
    if expired:
        with Transaction(db) as tx:
            tx.execute("DELETE FROM revocations WHERE expires_at <= ?", (now,))
            tx.execute("DELETE FROM families WHERE expires_at <= ?", (now,))
