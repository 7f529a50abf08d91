"""The SQLite store's file: creating it, its connection settings, and its schema migrations.

Durability choices:

* WAL, so the many readers (`revocations`, `get_family`) never wait for a writer.
* `synchronous=FULL`: with WAL, NORMAL survives a process crash but may lose the last commits
  on power loss. Here a lost commit is a lost revocation (a revoked token works again) or a lost
  rotation (the client's next honest refresh looks like reuse and kills its login). One fsync
  per write is a fair price for neither; reads do not pay it.
* `busy_timeout`: a second process holding the write lock makes us wait, not fail, up to the
  timeout; beyond it the call raises StoreUnavailableError.

The schema version is `PRAGMA user_version`; each step below runs once, in order, inside one
transaction, and a file newer than this code is refused rather than misread.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from sidecar.errors import StoreUnavailableError
from sidecar.store.sqlite_transaction import Transaction

SCHEMA_VERSION = 4

# STRICT tables (SQLite >= 3.37) refuse a value of the wrong type instead of storing it.
SCHEMA_V1 = """
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
SCHEMA_V2 = """
ALTER TABLE families ADD COLUMN previous_jti TEXT NOT NULL DEFAULT '';
ALTER TABLE families ADD COLUMN rotated_at INTEGER NOT NULL DEFAULT 0;
"""

# v3 (issue 13): the store's identity, written once.
SCHEMA_V3 = """
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT, WITHOUT ROWID;
"""

# v4 (issue 16): each revocation's position in the write order, so a sidecar reads only what
# changed since its last reconciliation. `sequence` is the last position given out; it never
# goes back (a purge deletes rows, never positions), so a position is never reused. Rows from
# before v4 are numbered once here.
SCHEMA_V4 = """
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

_STEPS = ((1, SCHEMA_V1), (2, SCHEMA_V2), (3, SCHEMA_V3), (4, SCHEMA_V4))


def connect(path: str, busy_timeout_ms: int) -> sqlite3.Connection:
    """Open `path` (":memory:" for a private in-memory database) with the settings above and
    the schema at SCHEMA_VERSION, creating the parent directory (0700) and file (0600)."""
    if path != ":memory:":
        file = Path(path)
        file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Create it 0600 ourselves: sqlite would honour the umask. Its -wal and -shm files
        # copy the main file's mode. An existing file keeps the mode its owner gave it.
        os.close(os.open(file, os.O_RDWR | os.O_CREAT, 0o600))
    conn = sqlite3.connect(path, timeout=busy_timeout_ms / 1000, isolation_level=None)
    try:
        # `timeout` above is sqlite3_busy_timeout; WAL persists in the file once set.
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def migrate(conn: sqlite3.Connection) -> None:
    """Bring the schema to SCHEMA_VERSION (PRAGMA user_version); refuse a newer one."""
    with Transaction(conn) as db:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreUnavailableError(
                f"token store schema version {version} is newer than {SCHEMA_VERSION}"
            )
        for step_version, script in _STEPS:
            if version < step_version:
                for statement in script.split(";"):
                    if statement.strip():
                        db.execute(statement)
        if version < SCHEMA_VERSION:
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
