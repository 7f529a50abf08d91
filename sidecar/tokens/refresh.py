"""Refresh families: one rotation per call, decided whole by the store (issues 3, 12, 13).

`Refresher.refresh` is the whole Refresh call: the token is verified on the verifier's one
path (tokens/verifier.py), then everything between "this refresh token is validly signed" and
"mint the pair" happens here, and the pair is minted by tokens/grants.py:

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
from sidecar.clock import Clock
from sidecar.errors import (
    ClaimError,
    InvalidRequestError,
    RefreshReuseError,
    RevokedTokenError,
    TokenError,
)
from sidecar.store.base import (
    FamilyRecord,
    Revocation,
    RotateOutcome,
    Rotation,
    TokenStore,
    deadline_for,
)
from sidecar.tokens import minting
from sidecar.tokens.grants import Minter
from sidecar.tokens.model import Claims, TokenGrant, TokenKind
from sidecar.tokens.options import TokenOptions
from sidecar.tokens.revocation import RevocationMirror
from sidecar.tokens.verifier import Verifier

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


def revoke_extra_s(settings: TokenOptions) -> int:
    """How long a family revocation outlives the family: its access tokens may."""
    return settings.max_access_ttl_s + settings.leeway_s


def family_revocation(
    settings: TokenOptions, issuer: str, family_id: str, family_end: int
) -> Revocation:
    """The revocation of a family ending at `family_end`, at its full horizon."""
    return Revocation("family", issuer, family_id, family_end + revoke_extra_s(settings))


class Refresher:
    """Rotates refresh tokens through the store; see the module docstring."""

    def __init__(
        self,
        *,
        store: TokenStore,
        mirror: RevocationMirror,
        settings: TokenOptions,
        verifier: Verifier,
        minter: Minter,
        clock: Clock,
    ) -> None:
        self._store = store
        self._mirror = mirror
        self._settings = settings
        self._verifier = verifier
        self._minter = minter
        self._clock = clock

    async def refresh(
        self, refresh_token: str, *, scope: str = "", time_left_s: float | None = None
    ) -> TokenGrant:
        """Rotate (RFC 9700 section 4.14.2) in one store transaction and mint the new pair;
        docs/lifecycle.md.

        A retired refresh token presented again within `refresh_grace_s` of its rotation gets
        a refresh token for the same successor jti (same claims as the one first returned,
        so either copy works, once) and a fresh access token; after the window it is reuse
        and revokes the family. Raises StoreUnavailableError when the store is unreachable
        or the write missed its deadline (`time_left_s` bounds it): then nothing changed.
        """
        if not refresh_token:
            raise InvalidRequestError("refresh_token required")
        now = int(self._clock.now())
        # One of our own refresh tokens: the verifier's one path, uncached.
        claims = self._verifier.decode(refresh_token, TokenKind.REFRESH, now).claims
        deadline_ms = deadline_for(self._clock.now(), self._store.timeout_s, time_left_s)
        try:
            rotated = await self.rotate(claims, scope=scope, now=now, deadline_ms=deadline_ms)
        except TokenError as refused:
            # Reuse, a revoked family, a mismatch: the token verified, so its ids are known
            # and the audit line names them (no second parse of the token).
            refused.claiming(claims.sub, claims.jti)
            raise
        family = rotated.family
        request = minting.IssueRequest(
            subject=family.subject,
            audience=family.audience,
            scope=rotated.scope,
            client_id=family.client_id,
            claims_json=family.claims_json,
            expires_in=self._settings.access_ttl_s,
            refresh=True,
        )
        access_job = self._minter.access_token(request, now, family.family_id)
        refresh_job = self._minter.refresh_token(family, rotated.successor_jti, rotated.minted_at)
        return await self._minter.sign(
            request, access_job, refresh_job, outcome=rotated.outcome.value
        )

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
