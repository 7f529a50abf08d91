"""The values a store keeps and hands back: refresh families, rotations, revocations.

Plain frozen data, no behaviour: what `TokenStore` (base.py) takes and returns, shared by every
store and by the token engine. Keyed by family id and by `iss` + `jti`, never by token text.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

RevocationKind = Literal["jti", "family"]
# A revocation as bulk reads hand it over (kind, issuer, key, expires_at): a plain tuple, since
# building a frozen dataclass per entry costs more than the rest of a million-entry load.
RevocationRow = tuple[RevocationKind, str, str, int]
# A page of the first full load grouped by (kind, issuer), the keys in UTF-8 and their
# horizons in the same order (issue 16: no tuple and no string object per row on that path;
# the keys may be one joined string, store/revocation_pages.PackedKeys).
RevocationGroup = tuple[RevocationKind, str, Sequence[bytes], Sequence[int]]


@dataclass(frozen=True, slots=True)
class FamilyRecord:
    """One login's chain of refresh tokens; `current_jti` is the only live refresh token."""

    family_id: str
    issuer: str
    subject: str
    audience: tuple[str, ...]
    scope: str
    client_id: str
    # The caller's extra claims as canonical JSON text, replayed into every access token.
    claims_json: str
    created_at: int
    # Absolute end of the family: no refresh after this, whatever the rotations.
    expires_at: int
    current_jti: str
    revoked: bool = False
    # The refresh token `current_jti` replaced, and when (`now` of that rotation): the grace
    # window hands `current_jti` again to whoever presents `previous_jti` shortly after.
    previous_jti: str = ""
    rotated_at: int = 0


class RotateOutcome(enum.Enum):
    ROTATED = "rotated"  # presented == current: current is now the successor
    GRACE = "grace"  # presented was retired < grace_s ago: family.current_jti is its successor
    REUSED = "reused"  # presented was retired: the family is now revoked
    REVOKED = "revoked"  # the family was already revoked (or has ended)
    UNKNOWN = "unknown"  # no such family
    MISMATCH = "mismatch"  # the presented subject/issuer are not the family's: nothing changed
    SCOPE_WIDENED = "scope_widened"  # the requested scope is not within the family's: nothing


@dataclass(frozen=True, slots=True)
class Rotation:
    """One refresh, as the store decides it: everything the decision needs, in one value.

    `subject`/`issuer` are the presented refresh token's `sub`/`iss`; `scope` is the narrowed
    scope asked for ("" keeps the family's); `revoke_extra_s` is how long past the family's
    end a reuse revocation must last (the longest access-token lifetime plus leeway: access
    tokens minted at the family's last refresh outlive it); `deadline_ms` as for every write.
    """

    family_id: str
    presented_jti: str
    next_jti: str
    now: int
    deadline_ms: int
    subject: str
    issuer: str
    scope: str = ""
    grace_s: int = 0
    revoke_extra_s: int = 0


@dataclass(frozen=True, slots=True)
class RotateResult:
    outcome: RotateOutcome
    # The family after the operation (None when UNKNOWN).
    family: FamilyRecord | None
    # REUSED only: the family revocation recorded in the same transaction (full horizon).
    revocation: Revocation | None = None


@dataclass(frozen=True, slots=True)
class Revocation:
    """A revoked token (`kind="jti"`, `key` = its jti) or family (`key` = family id).

    `expires_at` is when the revoked thing would have stopped working anyway; after it the
    entry can be forgotten, so revocation state never grows without bound.
    """

    kind: RevocationKind
    issuer: str
    key: str
    expires_at: int
