"""A `TokenStore` in one SQLite file, shareable by several sidecar processes on one host.

Usage: `store = SqliteTokenStore(path)` touches nothing; `await store.open()` creates the
directory, file and schema (start-up, where failures stop the process); `await store.close()`.

Threading: the stdlib driver blocks, and the gRPC server is one event loop, so every call runs on
one dedicated worker thread that owns the connection (a single-thread executor). Calls are
serialised in submission order and the connection never crosses threads. A cancelled caller
cannot cut a transaction short: a queued call is dropped, a running one finishes.

This module is that thread and the `TokenStore` methods; the rest has a module each: the file,
its settings and migrations (sqlite_schema.py), a write transaction with its deadline
(sqlite_transaction.py), the families table and the rotation write (sqlite_families.py), the
revocations table (sqlite_revocations.py). Every write is one `BEGIN IMMEDIATE` transaction,
rolled back past its deadline (issue 13). Identity: the `meta` table holds the store's epoch
(written once); a new file is a new epoch.

Every sqlite3 or OS error becomes StoreUnavailableError with a generic message (the original is
chained as `__cause__` for operators; SQL text carries no values, all of them are bound).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from sidecar.clock import Clock, SystemClock
from sidecar.errors import StoreUnavailableError
from sidecar.store import sqlite_families, sqlite_revocations
from sidecar.store.base import RevocationFeed
from sidecar.store.records import (
    FamilyRecord,
    Revocation,
    RevocationGroup,
    RevocationRow,
    RotateResult,
    Rotation,
)
from sidecar.store.sqlite_schema import SCHEMA_VERSION, connect
from sidecar.store.sqlite_transaction import Transaction

__all__ = ["SCHEMA_VERSION", "SqliteTokenStore"]

_T = TypeVar("_T")


class SqliteTokenStore:
    """A `TokenStore` in the SQLite file at `path` (":memory:" for a private in-memory one)."""

    def __init__(
        self, path: str | Path, *, busy_timeout_ms: int = 5000, clock: Clock | None = None
    ) -> None:
        self._path = str(path)
        self._busy_timeout_ms = busy_timeout_ms
        self._clock: Clock = clock or SystemClock()
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    async def open(self) -> None:
        """Create the parent directory (0700), file (0600) and schema; no-op when open.

        Raises StoreUnavailableError when the file cannot be created or opened, or holds a
        schema newer than this code knows.
        """
        if self._executor is not None:
            return
        if self._closed:
            raise StoreUnavailableError()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        try:
            await self._run(self._open_sync, need_conn=False)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    @property
    def timeout_s(self) -> float:
        return self._busy_timeout_ms / 1000

    # The worker thread takes the GIL back per row: overlapping it with a merge slows both.
    # (Issue 16: a read-ahead of grouped pages built in SQL, taking it once or twice a page,
    # was tried too and gained nothing measurable on 2 shared cores.)
    scan_ahead = False

    async def ping(self) -> None:
        await self._run(lambda: self._db().execute("SELECT 1").fetchone())

    async def epoch(self, candidate: str, *, deadline_ms: int) -> str:
        def epoch_sync() -> str:
            select = "SELECT value FROM meta WHERE name = 'epoch'"
            found = self._db().execute(select).fetchone()
            if found is not None:
                return str(found[0])  # already set: a read, no deadline to miss
            with self._transaction(deadline_ms) as db:
                db.execute(
                    "INSERT INTO meta (name, value) VALUES ('epoch', ?)"
                    " ON CONFLICT (name) DO NOTHING",
                    (candidate,),
                )
                return str(db.execute(select).fetchone()[0])

        return await self._run(epoch_sync)

    async def persistence(self) -> str:
        await self.ping()
        return "process" if self._path == ":memory:" else "fsync"

    async def create_family(self, family: FamilyRecord, *, deadline_ms: int) -> None:
        def insert() -> None:
            try:
                with self._transaction(deadline_ms) as db:
                    sqlite_families.insert_family(db, family)
            except sqlite3.IntegrityError:
                raise ValueError("family id already exists") from None

        await self._run(insert)

    async def get_family(self, family_id: str) -> FamilyRecord | None:
        return await self._run(lambda: sqlite_families.select_family(self._db(), family_id))

    async def rotate(self, rotation: Rotation) -> RotateResult:
        def rotate_sync() -> RotateResult:
            # Read-only outcomes commit nothing, but still end inside the transaction (and
            # its deadline check): a late call must not answer as if it had been on time.
            with self._transaction(rotation.deadline_ms) as db:
                return sqlite_families.rotate_in(db, rotation)

        return await self._run(rotate_sync)

    async def revoke(self, revocation: Revocation, *, deadline_ms: int) -> None:
        await self.restore((revocation,), deadline_ms=deadline_ms)

    async def restore(self, revocations: Sequence[Revocation], *, deadline_ms: int) -> int:
        revoked_families = [r.key for r in revocations if r.kind == "family"]

        def restore_sync() -> int:
            with self._transaction(deadline_ms) as db:
                written = sqlite_revocations.put_revocations(db, revocations)
                sqlite_families.mark_revoked(db, revoked_families)
                return written

        return await self._run(restore_sync)

    async def purge(self, now: int) -> None:
        await self._run(lambda: sqlite_revocations.purge(self._db(), now))

    async def count_revocations(self, from_expires_at: int) -> int | None:
        """None: a transaction is all or nothing, and a replaced or restored file is caught
        by its epoch or its sequence going back (`revocations_since`)."""
        await self.ping()
        return None

    async def revocation_cursor(self) -> str:
        return await self._run(lambda: str(sqlite_revocations.sequence(self._db())))

    async def scan_revocations(
        self, token: str, now: int, limit: int
    ) -> tuple[list[RevocationRow], str]:
        return await self._run(lambda: sqlite_revocations.scan(self._db(), token, now, limit))

    async def scan_revocation_groups(
        self, token: str, now: int, limit: int
    ) -> tuple[list[RevocationGroup], str]:
        return await self._run(
            lambda: sqlite_revocations.scan_groups(self._db(), token, now, limit)
        )

    async def revocations_since(
        self, cursor: str, now: int, limit: int
    ) -> tuple[list[RevocationRow], str] | None:
        position = int(cursor)
        return await self._run(lambda: sqlite_revocations.since(self._db(), position, now, limit))

    async def revocations(self, now: int) -> list[Revocation]:
        def revocations_sync() -> list[Revocation]:
            sqlite_revocations.purge(self._db(), now)
            return sqlite_revocations.live(self._db(), now)

        return await self._run(revocations_sync)

    async def open_revocation_feed(self) -> RevocationFeed | None:
        """None: other processes sharing the file reach this mirror by polling (app/store.py)."""
        await self.ping()
        return None

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        executor, self._executor = self._executor, None
        if executor is None:
            return
        conn, self._conn = self._conn, None
        if conn is not None:
            # Queued behind every call already submitted, so those finish first.
            await asyncio.get_running_loop().run_in_executor(executor, conn.close)
        executor.shutdown(wait=False)

    # --- worker-thread side ------------------------------------------------------------------

    async def _run(self, fn: Callable[[], _T], *, need_conn: bool = True) -> _T:
        """Run `fn` on the worker thread; every driver or OS failure becomes unavailable."""
        executor = self._executor
        if executor is None or self._closed or (need_conn and self._conn is None):
            raise StoreUnavailableError()
        try:
            future = asyncio.get_running_loop().run_in_executor(executor, fn)
        except RuntimeError as exc:  # the executor was shut down by a racing `close`
            raise StoreUnavailableError() from exc
        try:
            return await future
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailableError() from exc

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise sqlite3.ProgrammingError("store closed")
        return self._conn

    def _open_sync(self) -> None:
        self._conn = connect(self._path, self._busy_timeout_ms)

    def _transaction(self, deadline_ms: int) -> Transaction:
        """A write transaction that rolls back instead of committing past `deadline_ms`
        (StoreDeadlineError)."""
        return Transaction(self._db(), deadline_ms, self._clock)
