"""What the token engine asks of a store: refresh families and revocations.

State is keyed by family id and by `iss` + `jti`, never by token text: one token has several
accepted spellings elsewhere, and a store keyed by text would let a respelled token dodge a
revocation. Every method may raise `StoreUnavailableError` when the backend cannot be reached;
nothing else escapes.

Atomicity is the store's job: `rotate` is one transaction (SQLite) or one script (Redis), so two
sidecars presenting the same refresh token at the same instant see exactly one ROTATED.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal, Protocol

RevocationKind = Literal["jti", "family"]


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


class RotateOutcome(enum.Enum):
    ROTATED = "rotated"  # presented == current: current is now the successor
    REUSED = "reused"  # presented was retired: the family is now revoked
    REVOKED = "revoked"  # the family was already revoked (or has ended)
    UNKNOWN = "unknown"  # no such family


@dataclass(frozen=True, slots=True)
class RotateResult:
    outcome: RotateOutcome
    # The family after the operation (None when UNKNOWN).
    family: FamilyRecord | None


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


class TokenStore(Protocol):
    async def ping(self) -> None:
        """Return when the backend answers; raise StoreUnavailableError otherwise."""
        ...

    async def create_family(self, family: FamilyRecord) -> None:
        """Record a new family whose first refresh token is `family.current_jti`."""
        ...

    async def get_family(self, family_id: str) -> FamilyRecord | None: ...

    async def rotate(
        self, family_id: str, presented_jti: str, next_jti: str, now: int
    ) -> RotateResult:
        """Atomically retire `presented_jti` in favour of `next_jti`.

        ROTATED when `presented_jti` is the family's current token and the family is live
        (not revoked, `now < expires_at`); REUSED when it is not current, in which case the
        family is marked revoked and a family revocation is recorded (until `expires_at`)
        in the same transaction; REVOKED when the family is revoked or ended; UNKNOWN when
        there is no such family.
        """
        ...

    async def revoke(self, revocation: Revocation) -> None:
        """Record a revocation (idempotent). A family revocation also marks the family."""
        ...

    async def revocations(self, now: int) -> list[Revocation]:
        """Every revocation still in force at `now`; expired ones may be purged."""
        ...

    async def close(self) -> None: ...
