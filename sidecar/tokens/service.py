"""TokenService: issue, verify, refresh, introspect and revoke, knowing nothing of gRPC.

Verify is the hot path and is synchronous on purpose: strict parsing, one signature check
with a pre-built key, claim rules, and a dict lookup in the revocation mirror. It never
touches the store, so a slow or absent store cannot slow or stop it. Every verification
(Verify, VerifyBatch, ext_authz, Refresh's and Introspect's decoding) is `Verifier`'s one
path (tokens/verifier.py); the methods here hand over to it. Everything that changes state
is async and goes through the `TokenStore`, which owns atomicity.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from sidecar.clock import Clock
from sidecar.config import TokenSettings
from sidecar.errors import (
    AuthSidecarError,
    InvalidRequestError,
    KeyMaterialError,
    TokenError,
)
from sidecar.keys.material import KeyMaterial
from sidecar.keys.ring import KeyRing
from sidecar.store.base import FamilyRecord, Revocation, TokenStore, deadline_for
from sidecar.tokens import minting
from sidecar.tokens.cache import VerifyCache
from sidecar.tokens.claims import ClaimsPolicy
from sidecar.tokens.events import EventLog, retired_kids
from sidecar.tokens.issuers import Issuers
from sidecar.tokens.jws import decode_jws
from sidecar.tokens.model import Introspection, TokenGrant, TokenKind, VerifiedToken
from sidecar.tokens.refresh import Refresher, family_revocation
from sidecar.tokens.revocation import RevocationMirror
from sidecar.tokens.signing import Signer, SignJob
from sidecar.tokens.store_sync import StoreSync
from sidecar.tokens.verifier import Verifier, VerifyItem

log = logging.getLogger(__name__)


class TokenService:
    def __init__(
        self,
        *,
        ring: KeyRing,
        store: TokenStore,
        settings: TokenSettings,
        clock: Clock,
        issuers: Issuers | None = None,
        signer: Signer | None = None,
        events: EventLog | None = None,
    ) -> None:
        self._ring = ring
        # Where signatures are computed (tokens/signing.py); its owner (app.py) closes it.
        # None: every signature in place, on the calling thread.
        self._signer = signer or Signer(0)
        # External issuers whose access tokens Verify accepts (tokens/issuers.py); None:
        # only our own tokens, and verification is exactly as without the feature.
        self._issuers = issuers
        self._store = store
        self._settings = settings
        self._clock = clock
        self._mirror = RevocationMirror()
        # What the Watch stream sends (tokens/events.py): fed by the mirror and by key-ring
        # swaps, each after the change is in force here.
        self._events = events or EventLog()
        self._mirror.on_new = self._events.publish_revocations
        self._mirror.on_reset = self._events.publish_reset
        self._refresher = Refresher(store=store, mirror=self._mirror, settings=settings)
        self._sync = StoreSync(store, self._mirror, clock)
        max_lifetime = max(settings.max_access_ttl_s, settings.refresh_ttl_s)
        self._policies = {
            TokenKind.ACCESS: ClaimsPolicy(
                issuer=settings.issuer,
                audiences=settings.audiences,
                leeway_s=settings.leeway_s,
                max_lifetime_s=max_lifetime,
            ),
            # Refresh tokens are addressed to the issuer itself (see minting.refresh_claims).
            TokenKind.REFRESH: ClaimsPolicy(
                issuer=settings.issuer,
                audiences=(settings.issuer,),
                leeway_s=settings.leeway_s,
                max_lifetime_s=max_lifetime,
                required=frozenset({"iss", "sub", "aud", "exp", "iat", "jti", "sid"}),
            ),
        }
        self._verifier = Verifier(
            ring=ring,
            policies=self._policies,
            clock=clock,
            revocations=self._mirror,
            cache=VerifyCache(
                max_entries=settings.verify_cache_entries, max_bytes=settings.verify_cache_bytes
            ),
            max_token_bytes=settings.max_token_bytes,
            max_batch=settings.max_verify_batch,
            issuers=issuers,
        )

    @property
    def ring(self) -> KeyRing:
        return self._ring

    @property
    def revocations(self) -> RevocationMirror:
        return self._mirror

    @property
    def verify_cache(self) -> VerifyCache:
        return self._verifier.cache

    @property
    def max_token_bytes(self) -> int:
        return self._settings.max_token_bytes

    @property
    def events(self) -> EventLog:
        return self._events

    @property
    def store_sync(self) -> StoreSync:
        """The mirror's reconciliation with the store: epoch, restored revocations."""
        return self._sync

    def replace_ring(self, ring: KeyRing) -> None:
        """Swap the key set atomically (one attribute store); calls in flight keep the old.
        Then KeyRetired for every kid that no longer verifies as before (Watch). The
        verifier's ring is set in the same step (no await between: nothing runs between the
        two stores on the event loop)."""
        old, self._ring = self._ring, ring
        self._verifier.ring = ring
        self._events.publish_retired(retired_kids(old, ring))

    async def start(self) -> None:
        """Check the store answers and load the live revocations into the mirror."""
        await self._store.ping()
        await self.sync_revocations()

    async def sync_revocations(self) -> None:
        """Reconcile the mirror with the store, writing back what a lost store forgot
        (tokens/store_sync.py); raises StoreUnavailableError."""
        await self._sync.reconcile()

    def _deadline(self, time_left_s: float | None) -> int:
        """A store write's deadline (issue 13): see `store.base.deadline_for`."""
        return deadline_for(self._clock.now(), self._store.timeout_s, time_left_s)

    # -- the hot path: tokens/verifier.py ----------------------------------------------

    def verify(
        self, token: str, *, audience: str | None = None, required_scopes: Collection[str] = ()
    ) -> VerifiedToken:
        return self._verifier.verify(token, audience=audience, required_scopes=required_scopes)

    def verify_batch(self, items: Sequence[VerifyItem]) -> list[VerifiedToken | AuthSidecarError]:
        return self._verifier.verify_batch(items)

    async def verify_refetching(
        self, token: str, *, audience: str | None = None, required_scopes: Collection[str] = ()
    ) -> VerifiedToken:
        return await self._verifier.verify_refetching(
            token, audience=audience, required_scopes=required_scopes
        )

    async def verify_batch_refetching(
        self, items: Sequence[VerifyItem]
    ) -> list[VerifiedToken | AuthSidecarError]:
        return await self._verifier.verify_batch_refetching(items)

    def _decode(self, token: str, kind: TokenKind, now: float) -> VerifiedToken:
        """One of our own tokens of `kind` (Refresh): the verifier's path, uncached."""
        return self._verifier.decode(token, kind, now)

    # -- minting --------------------------------------------------------------------------

    async def issue(
        self,
        *,
        subject: str,
        audience: Sequence[str] = (),
        scope: str = "",
        claims: Mapping[str, Any] | None = None,
        client_id: str = "",
        expires_in: int = 0,
        refresh_token: bool = False,
        time_left_s: float | None = None,
    ) -> TokenGrant:
        """`time_left_s`: the call's remaining time (its gRPC deadline), which bounds the
        store write's deadline; a family not recorded by then is never recorded."""
        s = self._settings
        request = minting.checked_request(
            subject=subject,
            audience=audience,
            scope=scope,
            claims=claims or {},
            client_id=client_id,
            expires_in=expires_in,
            refresh=refresh_token,
            default_audience=s.default_audience,
            default_ttl_s=s.access_ttl_s,
            max_ttl_s=s.max_access_ttl_s,
        )
        now = self._now()
        family_id = ""
        refresh_job: SignJob | None = None
        if request.refresh:
            family_id, rt_jti = minting.new_id(), minting.new_id()
            family = FamilyRecord(
                family_id=family_id,
                issuer=s.issuer,
                subject=request.subject,
                audience=request.audience,
                scope=request.scope,
                client_id=request.client_id,
                claims_json=request.claims_json,
                created_at=now,
                expires_at=now + s.family_ttl_s,
                current_jti=rt_jti,
            )
            # Recorded before any token leaves: a refresh token the store does not know
            # would be refused at its first use.
            await self._store.create_family(family, deadline_ms=self._deadline(time_left_s))
            refresh_job = self._refresh_token(family, rt_jti, now)
        access_job = self._access_token(
            request, request.extra_claims, now, request.expires_in, family_id
        )
        rt = ""
        if refresh_job is None:
            (at,) = await self._signer.encode_all((access_job,))
        else:
            at, rt = await self._signer.encode_all((access_job, refresh_job))
        return _grant(at, rt, request, access_job)

    async def refresh(
        self, refresh_token: str, *, scope: str = "", time_left_s: float | None = None
    ) -> TokenGrant:
        """Rotate (RFC 9700 section 4.14.2): tokens/refresh.py decides, in one store
        transaction; docs/lifecycle.md.

        A retired refresh token presented again within `refresh_grace_s` of its rotation gets
        a refresh token for the same successor jti (same claims as the one first returned,
        so either copy works, once) and a fresh access token; after the window it is reuse
        and revokes the family. Raises StoreUnavailableError when the store is unreachable
        or the write missed its deadline (`time_left_s` bounds it): then nothing changed.
        """
        if not refresh_token:
            raise InvalidRequestError("refresh_token required")
        now = self._now()
        claims = self._decode(refresh_token, TokenKind.REFRESH, now).claims
        try:
            rotated = await self._refresher.rotate(
                claims, scope=scope, now=now, deadline_ms=self._deadline(time_left_s)
            )
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
        access_job = self._access_token(
            request, request.extra_claims, now, request.expires_in, family.family_id
        )
        at, rt = await self._signer.encode_all(
            (access_job, self._refresh_token(family, rotated.successor_jti, rotated.minted_at))
        )
        return _grant(at, rt, request, access_job, outcome=rotated.outcome.value)

    def _access_token(
        self,
        request: minting.IssueRequest,
        extra: Mapping[str, Any],
        now: int,
        ttl: int,
        family_id: str,
    ) -> SignJob:
        """The access token to sign; the signing key is chosen here, once per token."""
        claims = minting.access_claims(
            issuer=self._settings.issuer,
            request=request,
            extra=extra,
            jti=minting.new_id(),
            now=now,
            ttl_s=ttl,
            family_id=family_id,
        )
        return SignJob(claims, self._signing_key(), TokenKind.ACCESS.typ)

    def _refresh_token(self, family: FamilyRecord, jti: str, now: int) -> SignJob:
        exp = min(now + self._settings.refresh_ttl_s, family.expires_at)
        claims = minting.refresh_claims(
            issuer=family.issuer,
            subject=family.subject,
            client_id=family.client_id,
            jti=jti,
            family_id=family.family_id,
            now=now,
            exp=exp,
        )
        return SignJob(claims, self._signing_key(), TokenKind.REFRESH.typ)

    def _signing_key(self) -> KeyMaterial:
        key = self._ring.signing_key
        if key is None:
            raise KeyMaterialError("no signing key is configured")
        return key

    # -- introspection and revocation --------------------------------------------------------

    async def introspect(self, token: str) -> Introspection:
        """RFC 7662: any reason a token is not good is just `active: false`."""
        if not token:
            raise InvalidRequestError("token required")
        now = self._clock.now()
        verified = self._verifier.introspect(token, now)
        if verified is None:
            return Introspection(active=False)
        claims, kind = verified.claims, verified.kind
        if self._mirror.is_revoked(claims.iss, claims.jti, claims.sid):
            return Introspection(active=False)
        if kind is TokenKind.REFRESH:
            family = await self._store.get_family(claims.sid)
            if family is None or family.revoked or family.current_jti != claims.jti:
                return Introspection(active=False)
            if now >= family.expires_at:
                return Introspection(active=False)
        return Introspection(active=True, kind=kind, claims=claims)

    async def revoke(self, token: str, *, time_left_s: float | None = None) -> None:
        """RFC 7009: revoking an invalid, foreign or already revoked token succeeds quietly.

        Only the signature is required: an expired token may still be revoked (it is a
        no-op in effect), but a token we did not sign revokes nothing. StoreUnavailableError
        means not revoked (the write has a deadline, `time_left_s` bounds it).
        """
        if not token:
            raise InvalidRequestError("token required")
        try:
            jws = decode_jws(token, self._ring, max_bytes=self._settings.max_token_bytes)
        except TokenError:
            return
        claims = jws.claims
        iss, jti, exp = claims.get("iss"), claims.get("jti"), claims.get("exp")
        if iss != self._settings.issuer or not isinstance(jti, str) or not jti:
            return
        until = self._now() + self._settings.family_ttl_s
        if isinstance(exp, int | float) and not isinstance(exp, bool):
            until = int(exp) + self._settings.leeway_s
        typ = jws.header.get("typ")
        if typ == TokenKind.ACCESS.typ:
            revocation = Revocation("jti", iss, jti, until)
        elif typ == TokenKind.REFRESH.typ and isinstance(claims.get("sid"), str):
            family = await self._store.get_family(claims["sid"])
            end = family.expires_at if family is not None else until
            revocation = family_revocation(self._settings, iss, claims["sid"], end)
        else:
            return
        await self._store.revoke(revocation, deadline_ms=self._deadline(time_left_s))
        self._mirror.add(revocation)

    def jwks(self) -> dict[str, Any]:
        return self._ring.jwks()

    def _now(self) -> int:
        return int(self._clock.now())


def _grant(
    access_token: str,
    refresh_token: str,
    request: minting.IssueRequest,
    access: SignJob,
    *,
    outcome: str = "",
) -> TokenGrant:
    return TokenGrant(
        access_token,
        request.expires_in,
        request.scope,
        refresh_token,
        subject=access.claims["sub"],
        jti=access.claims["jti"],
        outcome=outcome,
    )
