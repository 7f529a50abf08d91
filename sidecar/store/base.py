"""What the token engine asks of a store: refresh families and revocations.

State is keyed by family id and by `iss` + `jti`, never by token text: one token has several
accepted spellings elsewhere, and a store keyed by text would let a respelled token dodge a
revocation. Every method may raise `StoreUnavailableError` when the backend cannot be reached
(or after `close`); nothing else escapes, except `ValueError` from `create_family` for a family
id already taken, which is a caller bug (ids are random), never a backend condition.

Atomicity is the store's job: `rotate` is one transaction (SQLite) or one script (Redis), so two
sidecars presenting the same refresh token at the same instant see exactly one ROTATED.

Racing presenters: when N callers present the same current token at once, one gets ROTATED.
With `grace_s = 0` the next one to run presents a now-retired token and gets REUSED (revoking
the family, as RFC 9700 section 4.14.2 reuse detection requires), and the rest find the family
revoked and get REVOKED. With a grace window (issue 3: the client that lost the first response
and retries), every other presenter within `grace_s` of the rotation gets GRACE and the same
successor, and only a presentation after the window is REUSED.

Forgetting: nothing is kept past its `expires_at`. `revocations(now)` purges expired
revocations and ended families, so `rotate`/`get_family` on an ended family may answer
UNKNOWN/None instead of REVOKED; both refuse, and the refresh token has expired by then anyway.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
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


class RevocationFeed(Protocol):
    """Revocations recorded by any sidecar sharing the store, pushed as they are written.

    Gap-free from the moment `TokenStore.open_revocation_feed` returned until iteration raises
    StoreUnavailableError (connection lost, or `close`). A consumer therefore opens the feed
    first, then loads `revocations(now)` (so nothing between the two is missed; an entry seen
    twice is harmless), then applies what the feed yields; after a failure it starts over.
    """

    def __aiter__(self) -> AsyncIterator[Revocation]: ...

    async def close(self) -> None:
        """Stop the feed (idempotent); a pending iteration ends with StoreUnavailableError."""
        ...


class TokenStore(Protocol):
    async def ping(self) -> None:
        """Return when the backend answers; raise StoreUnavailableError otherwise."""
        ...

    async def create_family(self, family: FamilyRecord) -> None:
        """Record a new family whose first refresh token is `family.current_jti`.

        Raises ValueError when `family.family_id` is already taken: never overwrite, since
        that would resurrect a revoked family or swap a live one's owner.
        """
        ...

    async def get_family(self, family_id: str) -> FamilyRecord | None: ...

    async def rotate(
        self, family_id: str, presented_jti: str, next_jti: str, now: int, grace_s: int = 0
    ) -> RotateResult:
        """Atomically retire `presented_jti` in favour of `next_jti`.

        Checked in this order, all in one atomic step:

        1. UNKNOWN when there is no such family (`family` is None);
        2. REVOKED when the family is already revoked or has ended (`now >= expires_at`),
           whatever jti was presented; nothing changes;
        3. ROTATED when `presented_jti` is the current token: `next_jti` becomes current,
           `presented_jti` becomes `previous_jti` and `rotated_at` becomes `now`;
        4. GRACE when `presented_jti` is `previous_jti` and `now < rotated_at + grace_s`:
           nothing changes, and `family.current_jti` is the successor minted at that
           rotation (so `grace_s = 0` disables the window; times are whole seconds, so the
           window is between `grace_s - 1` and `grace_s` seconds long);
        5. REUSED otherwise: the family is marked revoked and a family revocation
           (`issuer` = the family's, `key` = `family_id`, until `expires_at`) is recorded in
           the same transaction, so the revocation is never lost between the two writes.

        `family` in the result is the record after the step.
        """
        ...

    async def revoke(self, revocation: Revocation) -> None:
        """Record a revocation (idempotent; a repeat keeps the later `expires_at`).

        A family revocation also marks the family with that id revoked, in the same step,
        whatever the revocation's `issuer`: failing closed beats a mismatch leaving it live.
        """
        ...

    async def revocations(self, now: int) -> list[Revocation]:
        """Every revocation still in force at `now` (`expires_at > now`), in no set order.

        Expired revocations and ended families (`expires_at <= now`) are purged on the way
        (the contract suite checks it), so state stays bounded by what is still live.
        """
        ...

    async def open_revocation_feed(self) -> RevocationFeed | None:
        """A push feed of revocations written by other processes, or None when the store has
        none (memory: no other process shares it; SQLite: the mirror is reconciled by polling
        `revocations` every `store.sync_interval_s`). Raises StoreUnavailableError."""
        ...

    async def close(self) -> None:
        """Release the backend (idempotent); every later call raises StoreUnavailableError."""
        ...
