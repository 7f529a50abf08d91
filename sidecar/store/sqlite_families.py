"""The SQLite store's `families` table: one row per refresh family, and the rotation write.

Every function runs on the store's worker thread, inside the caller's transaction where it
writes. Literal SQL, no string building: every value is a bound parameter.
"""

from __future__ import annotations

import json
import sqlite3

from sidecar.store.records import FamilyRecord, RotateResult, Rotation
from sidecar.store.rotation import decide_rotation
from sidecar.store.sqlite_revocations import put_revocations

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
_ADVANCE = (
    "UPDATE families SET current_jti = ?, previous_jti = ?, rotated_at = ? WHERE family_id = ?"
)
_MARK_REVOKED = "UPDATE families SET revoked = 1 WHERE family_id = ?"


def insert_family(db: sqlite3.Connection, family: FamilyRecord) -> None:
    """Insert `family`; sqlite3.IntegrityError when its id is taken (never overwritten)."""
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
    db.execute(_INSERT_FAMILY, row)


def select_family(db: sqlite3.Connection, family_id: str) -> FamilyRecord | None:
    row = db.execute(_SELECT_FAMILY, (family_id,)).fetchone()
    if row is None:
        return None
    # Columns in FamilyRecord field order; only audience and revoked need converting.
    values = list(row)
    values[3] = tuple(json.loads(values[3]))
    values[10] = bool(values[10])
    return FamilyRecord(*values)


def rotate_in(db: sqlite3.Connection, r: Rotation) -> RotateResult:
    """`TokenStore.rotate` inside the caller's transaction: the shared decision (rotation.py)
    on the row as read under the write lock, then its write, if any."""
    result, write = decide_rotation(select_family(db, r.family_id), r)
    if write is None:
        return result
    if result.revocation is None:
        db.execute(
            _ADVANCE, (write.current_jti, write.previous_jti, write.rotated_at, write.family_id)
        )
    else:  # REUSED: the family and its revocation, in the same transaction
        db.execute(_MARK_REVOKED, (write.family_id,))
        put_revocations(db, (result.revocation,))
    return result


def mark_revoked(db: sqlite3.Connection, family_ids: list[str]) -> None:
    """Mark these families revoked (a family revocation's other half); absent ids are no-ops."""
    db.executemany(_MARK_REVOKED, [(family_id,) for family_id in family_ids])
