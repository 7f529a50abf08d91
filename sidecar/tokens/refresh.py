"""Refresh families: one rotation per call, decided whole by the store (issues 3, 12, 13).

The flow owns everything between "this refresh token is validly signed" and "mint the pair":

1. the mirror is asked first (a family revoked anywhere is refused with no store round trip);
2. ONE store transaction (`TokenStore.rotate`) decides subject/issuer match, revoked or ended,
   reuse, scope narrowing, rotation or grace, and on reuse records the family revocation at
   its full horizon (the family's end plus the longest access-token lifetime plus leeway, so
   access tokens minted at the family's last refresh die with it). Nothing commits unless the
   decision is final, so a refused refresh never consumes its token and a crash at any point
   leaves the store before or after the whole step, never between (the contract suite kills
   processes to show it);
3. the outcome is reported (`sidecar.calls.record_outcome`, and on the grant) in the domain's
   words: rotated, grace, reused, revoked, so metrics never guess.

The write carries a deadline (`store.base.deadline_for`): past it the store does nothing and
the call fails STORE_UNAVAILABLE, so a client told "unavailable" can retry with the same token.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

from sidecar.calls import record_outcome
from sidecar.config import TokenSettings
from sidecar.errors import ClaimError, InvalidRequestError, RefreshReuseError, RevokedTokenError
from sidecar.store.base import (
    FamilyRecord,
    Revocation,
    RotateOutcome,
    Rotation,
    TokenStore,
)
from sidecar.tokens import minting
from sidecar.tokens.model import Claims
from sidecar.tokens.revocation import RevocationMirror

log = logging.getLogger(__name__)


class RefreshOutcome(enum.Enum):
    ROTATED = "rotated"
    GRACE = "grace"
    REUSED = "reused"
    REVOKED = "revoked"


@dataclass(frozen=True, slots=True)
class Rotated:
    """A refresh the store accepted: mint an access token for `scope` and a refresh token
    with jti `successor_jti` stamped `minted_at` (the original rotation's time on GRACE, so
    the copy matches the one first returned)."""

    family: FamilyRecord
    successor_jti: str
    minted_at: int
    scope: str
    outcome: RefreshOutcome


def revoke_extra_s(settings: TokenSettings) -> int:
    """How long a family revocation outlives the family: its access tokens may."""
    return settings.max_access_ttl_s + settings.leeway_s


def family_revocation(
    settings: TokenSettings, issuer: str, family_id: str, family_end: int
) -> Revocation:
    """The revocation of a family ending at `family_end`, at its full horizon."""
    return Revocation("family", issuer, family_id, family_end + revoke_extra_s(settings))


class Refresher:
    """Rotates refresh tokens through the store; see the module docstring."""

    def __init__(
        self, *, store: TokenStore, mirror: RevocationMirror, settings: TokenSettings
    ) -> None:
        self._store = store
        self._mirror = mirror
        self._settings = settings

    async def rotate(self, claims: Claims, *, scope: str, now: int, deadline_ms: int) -> Rotated:
        """Raises RevokedTokenError, RefreshReuseError (the family is revoked by then),
        ClaimError (token and family disagree), InvalidRequestError (scope widened),
        StoreUnavailableError (including StoreDeadlineError: nothing was applied)."""
        if self._mirror.is_revoked(claims.iss, claims.jti, claims.sid):
            record_outcome(RefreshOutcome.REVOKED.value)
            raise RevokedTokenError()
        narrowed = minting.normalise_scope(scope) if scope else ""
        result = await self._store.rotate(
            Rotation(
                family_id=claims.sid,
                presented_jti=claims.jti,
                next_jti=minting.new_id(),
                now=now,
                deadline_ms=deadline_ms,
                subject=claims.sub,
                issuer=claims.iss,
                scope=narrowed,
                grace_s=self._settings.refresh_grace_s,
                revoke_extra_s=revoke_extra_s(self._settings),
            )
        )
        outcome, family = result.outcome, result.family
        if outcome is RotateOutcome.REUSED and result.revocation is not None:
            self._mirror.add(result.revocation)
            record_outcome(RefreshOutcome.REUSED.value)
            log.warning("refresh token reuse: family revoked sub=%s sid=%s", claims.sub, claims.sid)
            raise RefreshReuseError()
        if outcome is RotateOutcome.MISMATCH:
            raise ClaimError("sub", "refresh token does not match its family")
        if outcome is RotateOutcome.SCOPE_WIDENED:
            raise InvalidRequestError("scope may only narrow the family's scope")
        if family is None or outcome not in (RotateOutcome.ROTATED, RotateOutcome.GRACE):
            # UNKNOWN (never created, ended and purged, or lost with its store) or REVOKED.
            record_outcome(RefreshOutcome.REVOKED.value)
            raise RevokedTokenError()
        accepted = RefreshOutcome.ROTATED
        if outcome is RotateOutcome.GRACE:
            # The client lost the response to the rotation that retired this token: it gets
            # the successor that rotation recorded, minted as it was then.
            log.info("refresh retry within grace window sid=%s", family.family_id)
            accepted = RefreshOutcome.GRACE
        record_outcome(accepted.value)
        # ROTATED: current_jti is our next_jti and rotated_at our now (or, for a retried
        # rotation, the first run's: the same pair again).
        return Rotated(
            family, family.current_jti, family.rotated_at, narrowed or family.scope, accepted
        )
