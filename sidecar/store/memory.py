"""The reference `TokenStore`: plain dicts in one process.

For tests and single-process deployments: state dies with the process, and two sidecars never
share it. It defines the behaviour the other stores must match (the contract suite runs against
all of them), so it stays as plain as the protocol allows. Its refresh decision is
rotation.py's `decide_rotation`, the same function SQLite applies in its transaction.

Atomicity without a journal: every write decides and applies under one lock with no `await`
between its first read and its last write, so on one event loop nothing can interleave with it
and a cancelled caller cannot stop it half way (cancellation lands only on an `await`, and the
only one is taking the lock, before anything is read). A crash loses the whole store and every
mirror with it (same process), so no crash can leave a reuse half recorded either. The deadline
is checked on the store's clock once the lock is held, before anything is read or written.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from collections.abc import Sequence

from sidecar.clock import Clock, SystemClock
from sidecar.errors import StoreDeadlineError, StoreUnavailableError
from sidecar.store.base import RevocationFeed, group_rows
from sidecar.store.records import (
    FamilyRecord,
    Revocation,
    RevocationGroup,
    RevocationKind,
    RevocationRow,
    RotateResult,
    Rotation,
)
from sidecar.store.rotation import decide_rotation, past

_RevocationKey = tuple[RevocationKind, str, str]


class MemoryTokenStore:
    """A `TokenStore` over dicts; every method may raise StoreUnavailableError after `close`."""

    timeout_s = 1.0  # nothing here waits; the budget only bounds a caller's deadline
    scan_ahead = False  # a page is computed on the loop itself

    def __init__(self, *, clock: Clock | None = None) -> None:
        self._clock: Clock = clock or SystemClock()
        self._families: dict[str, FamilyRecord] = {}
        self._revocations: dict[_RevocationKey, Revocation] = {}
        # Each revocation's position: the write sequence number that last added it or
        # lengthened its horizon (issue 16, `revocations_since`).
        self._positions: dict[_RevocationKey, int] = {}
        self._sequence = 0
        self._epoch = ""
        # Every multi-step operation holds this lock. None of them awaits between its read
        # and its write, so the event loop alone makes them atomic; the lock keeps them
        # atomic if one ever does (an await there would otherwise let two rotates interleave).
        self._lock = asyncio.Lock()
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailableError()

    def _check_deadline(self, deadline_ms: int) -> None:
        if past(deadline_ms, self._clock.now()):
            raise StoreDeadlineError()

    async def ping(self) -> None:
        self._check_open()

    async def epoch(self, candidate: str, *, deadline_ms: int) -> str:
        self._check_open()
        async with self._lock:
            if not self._epoch:
                self._check_deadline(deadline_ms)
                self._epoch = candidate or secrets.token_hex(8)
            return self._epoch

    async def persistence(self) -> str:
        self._check_open()
        return "process"

    async def create_family(self, family: FamilyRecord, *, deadline_ms: int) -> None:
        self._check_open()
        async with self._lock:
            if family.family_id in self._families:
                raise ValueError("family id already exists")
            self._check_deadline(deadline_ms)
            self._families[family.family_id] = family

    async def get_family(self, family_id: str) -> FamilyRecord | None:
        self._check_open()
        return self._families.get(family_id)

    async def rotate(self, rotation: Rotation) -> RotateResult:
        self._check_open()
        r = rotation
        async with self._lock:
            self._check_deadline(r.deadline_ms)
            result, write = decide_rotation(self._families.get(r.family_id), r)
            if write is not None:
                self._families[r.family_id] = write
                if result.revocation is not None:  # REUSED: the family and its revocation
                    self._put_revocation(result.revocation)
            return result

    async def revoke(self, revocation: Revocation, *, deadline_ms: int) -> None:
        await self.restore((revocation,), deadline_ms=deadline_ms)

    async def restore(self, revocations: Sequence[Revocation], *, deadline_ms: int) -> int:
        self._check_open()
        written = 0
        async with self._lock:
            self._check_deadline(deadline_ms)
            for revocation in revocations:
                written += self._put_revocation(revocation)
                if revocation.kind == "family":
                    family = self._families.get(revocation.key)
                    if family is not None:
                        self._revoke_family(family)
        return written

    async def revocations(self, now: int) -> list[Revocation]:
        await self.purge(now)
        return list(self._revocations.values())

    async def purge(self, now: int) -> None:
        self._check_open()
        async with self._lock:
            expired = [k for k, r in self._revocations.items() if r.expires_at <= now]
            for key in expired:
                del self._revocations[key]
                del self._positions[key]
            self._families = {k: f for k, f in self._families.items() if f.expires_at > now}

    async def count_revocations(self, from_expires_at: int) -> int | None:
        self._check_open()
        return None  # one process: the store and its mirror live and die together

    async def revocation_cursor(self) -> str:
        self._check_open()
        return str(self._sequence)

    async def scan_revocations(
        self, token: str, now: int, limit: int
    ) -> tuple[list[RevocationRow], str]:
        page = await self._after(int(token or 0), now, limit)
        return page[0], (page[1] if page[2] == limit else "")

    async def scan_revocation_groups(
        self, token: str, now: int, limit: int
    ) -> tuple[list[RevocationGroup], str]:
        rows, token = await self.scan_revocations(token, now, limit)
        return group_rows(rows), token

    async def revocations_since(
        self, cursor: str, now: int, limit: int
    ) -> tuple[list[RevocationRow], str] | None:
        position = int(cursor)
        if position > self._sequence:
            return None  # a position this store never gave out
        rows, last, _ = await self._after(position, now, limit)
        return rows, last

    async def _after(
        self, position: int, now: int, limit: int
    ) -> tuple[list[RevocationRow], str, int]:
        """Rows with a position after `position` (the first `limit` of them, in order), the
        position of the last one looked at, and how many were looked at."""
        self._check_open()
        later = sorted((p, k) for k, p in self._positions.items() if p > position)[:limit]
        rows: list[RevocationRow] = []
        for _, key in later:
            r = self._revocations[key]
            if r.expires_at > now:
                rows.append((r.kind, r.issuer, r.key, r.expires_at))
        return rows, str(later[-1][0] if later else position), len(later)

    async def open_revocation_feed(self) -> RevocationFeed | None:
        self._check_open()
        return None  # one process: its own revocations reach its mirror directly

    async def close(self) -> None:
        self._closed = True
        self._families.clear()
        self._revocations.clear()
        self._positions.clear()

    def _revoke_family(self, family: FamilyRecord) -> FamilyRecord:
        revoked = dataclasses.replace(family, revoked=True)
        self._families[family.family_id] = revoked
        return revoked

    def _put_revocation(self, revocation: Revocation) -> bool:
        """Record; True when it was absent or held with a shorter horizon."""
        key: _RevocationKey = (revocation.kind, revocation.issuer, revocation.key)
        old = self._revocations.get(key)
        if old is not None and old.expires_at >= revocation.expires_at:
            return False
        self._revocations[key] = revocation
        self._sequence += 1
        self._positions[key] = self._sequence
        return True
