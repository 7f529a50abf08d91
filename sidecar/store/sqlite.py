"""A `TokenStore` in one SQLite file, shareable by several sidecar processes on one host.

Usage: `store = SqliteTokenStore(path)` touches nothing; `await store.open()` creates the
directory, file and schema (start-up, where failures stop the process); `await store.close()`.

Threading: the stdlib driver blocks, and the gRPC server is one event loop, so every call runs on
one dedicated worker thread that owns the connection (a single-thread executor). Calls are
serialised in submission order and the connection never crosses threads. A cancelled caller
cannot cut a transaction short: a queued call is dropped, a running one finishes.

Durability choices:

* WAL, so the many readers (`revocations`, `get_family`) never wait for a writer.
* `synchronous=FULL`: with WAL, NORMAL survives a process crash but may lose the last commits
  on power loss. Here a lost commit is a lost revocation (a revoked token works again) or a lost
  rotation (the client's next honest refresh looks like reuse and kills its login). One fsync
  per write is a fair price for neither; reads do not pay it.
* `busy_timeout`: a second process holding the write lock makes us wait, not fail, up to the
  timeout; beyond it the call raises StoreUnavailableError.
* Every write is one `BEGIN IMMEDIATE` transaction: the write lock is taken before the read, so
  two processes rotating the same token serialise and exactly one sees it current; a SIGKILL
  mid-transaction leaves the old state (SQLite's journal guarantees all or nothing).
* Deadlines (issue 13): a write compares its `deadline_ms` with the store's clock just before
  COMMIT and rolls back past it, so a write that waited for the lock (or behind other calls on
  the worker thread) longer than its caller did is never applied after the caller gave up.
* Identity: the `meta` table holds the store's epoch (written once); a new file is a new epoch.

Every sqlite3 or OS error becomes StoreUnavailableError with a generic message (the original is
chained as `__cause__` for operators; SQL text carries no values, all of them are bound).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from sidecar.clock import Clock, SystemClock
from sidecar.errors import StoreDeadlineError, StoreUnavailableError
from sidecar.store.base import (
    FamilyRecord,
    Revocation,
    RevocationFeed,
    RevocationGroup,
    RevocationRow,
    RotateOutcome,
    RotateResult,
    Rotation,
    past,
    scope_within,
)

SCHEMA_VERSION = 4

_T = TypeVar("_T")

# STRICT tables (SQLite >= 3.37) refuse a value of the wrong type instead of storing it.
_SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS families (
    family_id   TEXT PRIMARY KEY,
    issuer      TEXT NOT NULL,
    subject     TEXT NOT NULL,
    audience    TEXT NOT NULL,  -- JSON array of strings
    scope       TEXT NOT NULL,
    client_id   TEXT NOT NULL,
    claims_json TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    current_jti TEXT NOT NULL,
    revoked     INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX IF NOT EXISTS families_expires_at ON families (expires_at);
CREATE TABLE IF NOT EXISTS revocations (
    kind       TEXT NOT NULL CHECK (kind IN ('jti', 'family')),
    issuer     TEXT NOT NULL,
    key        TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (kind, issuer, key)
) STRICT, WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS revocations_expires_at ON revocations (expires_at);
"""

# v2 (issue 3, grace window): what the current refresh token replaced, and when.
_SCHEMA_V2 = """
ALTER TABLE families ADD COLUMN previous_jti TEXT NOT NULL DEFAULT '';
ALTER TABLE families ADD COLUMN rotated_at INTEGER NOT NULL DEFAULT 0;
"""

# v3 (issue 13): the store's identity, written once.
_SCHEMA_V3 = """
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT, WITHOUT ROWID;
"""

# v4 (issue 16): each revocation's position in the write order, so a sidecar reads only what
# changed since its last reconciliation. `sequence` is the last position given out; it never
# goes back (a purge deletes rows, never positions), so a position is never reused. Rows from
# before v4 are numbered once here.
_SCHEMA_V4 = """
ALTER TABLE revocations ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
CREATE TABLE IF NOT EXISTS sequence (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
UPDATE revocations SET seq = numbered.n
    FROM (SELECT kind AS k, issuer AS i, key AS y, row_number() OVER () AS n FROM revocations)
    AS numbered
    WHERE kind = numbered.k AND issuer = numbered.i AND key = numbered.y;
INSERT INTO sequence (name, value) SELECT 'revocations', count(*) FROM revocations;
CREATE INDEX IF NOT EXISTS revocations_seq ON revocations (seq);
"""

# Literal SQL, no string building: every value is a bound parameter.
_INSERT_FAMILY = (
    "INSERT INTO families (family_id, issuer, subject, audience, scope, client_id, claims_json,"
    " created_at, expires_at, current_jti, revoked, previous_jti, rotated_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_SELECT_FAMILY = (
    "SELECT family_id, issuer, subject, audience, scope, client_id, claims_json,"
    " created_at, expires_at, current_jti, revoked, previous_jti, rotated_at"
    " FROM families WHERE family_id = ?"
)
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
# The first load's scan (`scan_revocation_groups`): one (kind, issuer) at a time, in primary
# key order, keys as their UTF-8 bytes: two objects per row instead of five.
_FIRST_GROUP = "SELECT kind, issuer FROM revocations ORDER BY kind, issuer LIMIT 1"
_NEXT_GROUP = (
    "SELECT kind, issuer FROM revocations WHERE (kind, issuer) > (?, ?)"
    " ORDER BY kind, issuer LIMIT 1"
)
_GROUP_KEYS = (
    "SELECT CAST(key AS BLOB), expires_at FROM revocations"
    " WHERE kind = ? AND issuer = ? AND key > ? AND expires_at > ? ORDER BY key LIMIT ?"
)
_GROUP_KEYS_FIRST = _GROUP_KEYS.replace("key > ?", "key >= ?")
_SELECT_SEQUENCE = "SELECT value FROM sequence WHERE name = 'revocations'"
_SELECT_AFTER = (
    "SELECT kind, issuer, key, expires_at, seq FROM revocations WHERE seq > ? ORDER BY seq LIMIT ?"
)


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
        row = (
            family.family_id,
            family.issuer,
            family.subject,
            json.dumps(list(family.audience)),
            family.scope,
            family.client_id,
            family.claims_json,
            family.created_at,
            family.expires_at,
            family.current_jti,
            int(family.revoked),
            family.previous_jti,
            family.rotated_at,
        )

        def insert() -> None:
            try:
                with self._transaction(deadline_ms) as db:
                    db.execute(_INSERT_FAMILY, row)
            except sqlite3.IntegrityError:
                raise ValueError("family id already exists") from None

        await self._run(insert)

    async def get_family(self, family_id: str) -> FamilyRecord | None:
        return await self._run(lambda: self._select_family(self._db(), family_id))

    async def rotate(self, rotation: Rotation) -> RotateResult:
        r = rotation

        def rotate_sync() -> RotateResult:
            # Read-only outcomes commit nothing, but still end inside the transaction (and
            # its deadline check): a late call must not answer as if it had been on time.
            with self._transaction(r.deadline_ms) as db:
                return self._rotate_in(db, r)

        return await self._run(rotate_sync)

    def _rotate_in(self, db: sqlite3.Connection, r: Rotation) -> RotateResult:
        """The decision of `TokenStore.rotate`, inside the caller's transaction."""
        family = self._select_family(db, r.family_id)
        if family is None:
            return RotateResult(RotateOutcome.UNKNOWN, None)
        if family.subject != r.subject or family.issuer != r.issuer:
            return RotateResult(RotateOutcome.MISMATCH, family)
        if family.revoked or r.now >= family.expires_at:
            return RotateResult(RotateOutcome.REVOKED, family)
        if r.presented_jti == family.previous_jti and r.next_jti == family.current_jti:
            return RotateResult(RotateOutcome.ROTATED, family)  # the same call, retried
        current = r.presented_jti == family.current_jti
        grace = r.presented_jti == family.previous_jti and r.now < family.rotated_at + r.grace_s
        if current or grace:
            if r.scope and not scope_within(r.scope, family.scope):
                return RotateResult(RotateOutcome.SCOPE_WIDENED, family)
            if grace:
                return RotateResult(RotateOutcome.GRACE, family)
            db.execute(
                "UPDATE families SET current_jti = ?, previous_jti = ?, rotated_at = ?"
                " WHERE family_id = ?",
                (r.next_jti, r.presented_jti, r.now, r.family_id),
            )
            rotated = dataclasses.replace(
                family, current_jti=r.next_jti, previous_jti=r.presented_jti, rotated_at=r.now
            )
            return RotateResult(RotateOutcome.ROTATED, rotated)
        # A retired token came back: RFC 9700 section 4.14.2, revoke the whole family.
        revocation = Revocation(
            "family", family.issuer, r.family_id, family.expires_at + r.revoke_extra_s
        )
        db.execute("UPDATE families SET revoked = 1 WHERE family_id = ?", (r.family_id,))
        _put_revocations(db, (revocation,))
        revoked = dataclasses.replace(family, revoked=True)
        return RotateResult(RotateOutcome.REUSED, revoked, revocation)

    async def revoke(self, revocation: Revocation, *, deadline_ms: int) -> None:
        await self.restore((revocation,), deadline_ms=deadline_ms)

    async def restore(self, revocations: Sequence[Revocation], *, deadline_ms: int) -> int:
        families = [(r.key,) for r in revocations if r.kind == "family"]

        def restore_sync() -> int:
            with self._transaction(deadline_ms) as db:
                written = _put_revocations(db, revocations)
                db.executemany("UPDATE families SET revoked = 1 WHERE family_id = ?", families)
                return written

        return await self._run(restore_sync)

    async def purge(self, now: int) -> None:
        await self._run(lambda: self._purge_sync(now))

    def _purge_sync(self, now: int) -> None:
        db = self._db()
        # Purge only when something has expired: this is polled by every sidecar, and an
        # unconditional DELETE would take the write lock (and an fsync) on every poll.
        expired = db.execute(
            "SELECT EXISTS (SELECT 1 FROM revocations WHERE expires_at <= ?)"
            " OR EXISTS (SELECT 1 FROM families WHERE expires_at <= ?)",
            (now, now),
        ).fetchone()[0]
        if expired:
            with self._transaction() as tx:
                tx.execute("DELETE FROM revocations WHERE expires_at <= ?", (now,))
                tx.execute("DELETE FROM families WHERE expires_at <= ?", (now,))

    async def count_revocations(self, from_expires_at: int) -> int | None:
        """None: a transaction is all or nothing, and a replaced or restored file is caught
        by its epoch or its sequence going back (`revocations_since`)."""
        await self.ping()
        return None

    async def revocation_cursor(self) -> str:
        return await self._run(lambda: str(self._db().execute(_SELECT_SEQUENCE).fetchone()[0]))

    async def scan_revocations(
        self, token: str, now: int, limit: int
    ) -> tuple[list[RevocationRow], str]:
        """In primary-key order (keyset pagination: the token is the last key, as JSON), so
        the scan reads the table sequentially; what is written meanwhile is read after the
        cursor taken before the scan."""

        def scan_sync() -> tuple[list[RevocationRow], str]:
            db = self._db()
            if token:
                found = db.execute(_SCAN_AFTER, (*json.loads(token), now, limit)).fetchall()
            else:
                found = db.execute(_SCAN_FIRST, (now, limit)).fetchall()
            # Rows of (kind, issuer, key, expires_at) as the STRICT table holds them.
            rows: list[RevocationRow] = found
            return rows, (json.dumps(found[-1][:3]) if len(found) == limit else "")

        return await self._run(scan_sync)

    async def scan_revocation_groups(
        self, token: str, now: int, limit: int
    ) -> tuple[list[RevocationGroup], str]:
        """Keyset pagination as `scan_revocations`, a (kind, issuer) at a time; the token
        is the last (kind, issuer, key) read, as JSON."""

        def groups_sync() -> tuple[list[RevocationGroup], str]:
            db = self._db()
            if token:
                kind, issuer, after = json.loads(token)
                query = _GROUP_KEYS
            else:
                first = db.execute(_FIRST_GROUP).fetchone()
                if first is None:
                    return [], ""
                (kind, issuer), after, query = first, "", _GROUP_KEYS_FIRST
            groups: list[RevocationGroup] = []
            left = limit
            while True:
                found = db.execute(query, (kind, issuer, after, now, left)).fetchall()
                if found:
                    keys, untils = zip(*found, strict=True)
                    groups.append((kind, issuer, list(keys), list(untils)))
                    left -= len(found)
                if not left:
                    last = found[-1][0].decode("utf-8", "surrogatepass")
                    return groups, json.dumps([kind, issuer, last])
                following = db.execute(_NEXT_GROUP, (kind, issuer)).fetchone()
                if following is None:
                    return groups, ""
                (kind, issuer), after, query = following, "", _GROUP_KEYS_FIRST

        return await self._run(groups_sync)

    async def revocations_since(
        self, cursor: str, now: int, limit: int
    ) -> tuple[list[RevocationRow], str] | None:
        position = int(cursor)

        def since_sync() -> tuple[list[RevocationRow], str] | None:
            # A sequence behind our cursor: the file was replaced or restored from a backup.
            if self._db().execute(_SELECT_SEQUENCE).fetchone()[0] < position:
                return None
            rows, last, _ = self._after(position, now, limit)
            return rows, last

        return await self._run(since_sync)

    def _after(self, position: int, now: int, limit: int) -> tuple[list[RevocationRow], str, int]:
        """Rows after `position` in write order (up to `limit`, those in force at `now`), the
        position of the last row looked at, and how many rows were looked at."""
        found = self._db().execute(_SELECT_AFTER, (position, limit)).fetchall()
        rows: list[RevocationRow] = [
            (kind, issuer, key, until) for kind, issuer, key, until, _ in found if until > now
        ]
        return rows, str(found[-1][4] if found else position), len(found)

    async def revocations(self, now: int) -> list[Revocation]:
        def revocations_sync() -> list[Revocation]:
            db = self._db()
            self._purge_sync(now)
            rows = db.execute(
                "SELECT kind, issuer, key, expires_at FROM revocations WHERE expires_at > ?",
                (now,),
            ).fetchall()
            return [
                Revocation(kind, issuer, key, expires_at) for kind, issuer, key, expires_at in rows
            ]

        return await self._run(revocations_sync)

    async def open_revocation_feed(self) -> RevocationFeed | None:
        """None: other processes sharing the file reach this mirror by polling (app.py)."""
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
        if self._path != ":memory:":
            path = Path(self._path)
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            # Create it 0600 ourselves: sqlite would honour the umask. Its -wal and -shm files
            # copy the main file's mode. An existing file keeps the mode its owner gave it.
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        conn = sqlite3.connect(
            self._path, timeout=self._busy_timeout_ms / 1000, isolation_level=None
        )
        try:
            # `timeout` above is sqlite3_busy_timeout; WAL persists in the file once set.
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            self._conn = conn
            self._migrate()
        except BaseException:
            self._conn = None
            conn.close()
            raise

    def _migrate(self) -> None:
        """Bring the schema to SCHEMA_VERSION (PRAGMA user_version); refuse a newer one."""
        with self._transaction() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreUnavailableError(
                    f"token store schema version {version} is newer than {SCHEMA_VERSION}"
                )
            steps = ((1, _SCHEMA_V1), (2, _SCHEMA_V2), (3, _SCHEMA_V3), (4, _SCHEMA_V4))
            for step_version, script in steps:
                if version < step_version:
                    for statement in script.split(";"):
                        if statement.strip():
                            db.execute(statement)
            if version < SCHEMA_VERSION:
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _transaction(self, deadline_ms: int | None = None) -> _Transaction:
        """A write transaction; with `deadline_ms`, one that rolls back instead of committing
        past it (StoreDeadlineError)."""
        return _Transaction(self._db(), deadline_ms, self._clock)

    @staticmethod
    def _select_family(db: sqlite3.Connection, family_id: str) -> FamilyRecord | None:
        row = db.execute(_SELECT_FAMILY, (family_id,)).fetchone()
        if row is None:
            return None
        # Columns in FamilyRecord field order; only audience and revoked need converting.
        values = list(row)
        values[3] = tuple(json.loads(values[3]))
        values[10] = bool(values[10])
        return FamilyRecord(*values)


def _put_revocations(db: sqlite3.Connection, revocations: Iterable[Revocation]) -> int:
    """Upsert inside the caller's transaction; each row that changes takes the next position.
    Returns how many changed (were absent or had a shorter horizon)."""
    position = db.execute(_SELECT_SEQUENCE).fetchone()[0]
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


class _Transaction:
    """`BEGIN IMMEDIATE` ... `COMMIT`, or `ROLLBACK` on any exception (then re-raised), and
    `ROLLBACK` + StoreDeadlineError when the deadline has passed by the time it would commit."""

    def __init__(self, db: sqlite3.Connection, deadline_ms: int | None, clock: Clock) -> None:
        self._db = db
        self._deadline_ms = deadline_ms
        self._clock = clock

    def __enter__(self) -> sqlite3.Connection:
        self._db.execute("BEGIN IMMEDIATE")
        return self._db

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            if self._deadline_ms is not None and past(self._deadline_ms, self._clock.now()):
                self._rollback()
                raise StoreDeadlineError()
            try:
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            return
        self._rollback()

    def _rollback(self) -> None:
        if self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # The original error says more; sqlite rolls back on close anyway.
