"""TokenService: issue, verify, refresh, introspect and revoke, knowing nothing of gRPC.

Verify is the hot path and is synchronous on purpose: strict parsing, one signature check
with a pre-built key, claim rules, and a dict lookup in the revocation mirror. It never
touches the store, so a slow or absent store cannot slow or stop it. Everything that changes
state is async and goes through the `TokenStore`, which owns atomicity.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from sidecar.clock import Clock
from sidecar.config import TokenSettings
from sidecar.errors import (
    AudienceMismatchError,
    AuthSidecarError,
    InvalidRequestError,
    KeyMaterialError,
    RevokedTokenError,
    ScopeMissingError,
    TokenError,
    UnknownKeyError,
)
from sidecar.keys.material import KeyMaterial
from sidecar.keys.ring import KeyRing
from sidecar.store.base import FamilyRecord, Revocation, TokenStore, deadline_for
from sidecar.tokens import minting
from sidecar.tokens.cache import VerifyCache
from sidecar.tokens.claims import ClaimsPolicy
from sidecar.tokens.events import EventLog, retired_kids
from sidecar.tokens.issuers import Issuers
from sidecar.tokens.jws import KeyLookup, decode_jws, decode_jws_routed
from sidecar.tokens.model import Claims, Introspection, TokenGrant, TokenKind, VerifiedToken
from sidecar.tokens.refresh import Refresher, family_revocation
from sidecar.tokens.revocation import RevocationMirror
from sidecar.tokens.signing import Signer, SignJob
from sidecar.tokens.store_sync import StoreSync

log = logging.getLogger(__name__)
# One VerifyBatch item: (token, audience or None, required scopes).
VerifyItem = tuple[str, str | None, Collection[str]]
_KIND_BY_TYP = {kind.typ: kind for kind in TokenKind}


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
        self._cache = VerifyCache(
            max_entries=settings.verify_cache_entries, max_bytes=settings.verify_cache_bytes
        )
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

    @property
    def ring(self) -> KeyRing:
        return self._ring

    @property
    def revocations(self) -> RevocationMirror:
        return self._mirror

    @property
    def verify_cache(self) -> VerifyCache:
        return self._cache

    @property
    def events(self) -> EventLog:
        return self._events

    @property
    def store_sync(self) -> StoreSync:
        """The mirror's reconciliation with the store: epoch, restored revocations."""
        return self._sync

    def replace_ring(self, ring: KeyRing) -> None:
        """Swap the key set atomically (one attribute store); calls in flight keep the old.
        Then KeyRetired for every kid that no longer verifies as before (Watch)."""
        old, self._ring = self._ring, ring
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

    # -- the hot path -------------------------------------------------------------------

    def verify(
        self, token: str, *, audience: str | None = None, required_scopes: Collection[str] = ()
    ) -> VerifiedToken:
        if not token:
            raise InvalidRequestError("token required")
        now = self._clock.now()
        cache = self._cache
        if cache.enabled and len(token) <= self._settings.max_token_bytes:
            verified = self._verify_cached(cache, token, now, audience)
        else:
            verified = self._decode(token, TokenKind.ACCESS, now, audience)
        claims = verified.claims
        if self._mirror.is_revoked(claims.iss, claims.jti, claims.sid):
            raise RevokedTokenError()
        if required_scopes and not claims.scopes.issuperset(required_scopes):
            raise ScopeMissingError()
        return verified

    def _verify_cached(
        self, cache: VerifyCache, token: str, now: float, audience: str | None
    ) -> VerifiedToken:
        """Signature and static claim rules from the cache; the clock-dependent and per-call
        checks run on every hit, in `validate`'s order (tokens/cache.py has the argument)."""
        digest = cache.digest(token)
        entry = cache.get(digest)
        if entry is not None:
            verified = entry.verified
            keys: KeyLookup = self._ring
            policy = self._policies[TokenKind.ACCESS]
            if self._issuers is not None:
                # An external issuer's token is re-checked with that issuer's keys AND rules
                # (its leeway may be tighter than ours), as `_decode_routed` checked it.
                issuer = self._issuers.route(verified.claims.all)
                if issuer is not None:
                    keys, policy = issuer.keys, issuer.policy
            if keys.get(verified.kid) is entry.key:
                cache.count(hit=True)
                claims = verified.claims
                policy.check_times(claims.all, now)
                if audience is not None and audience not in claims.aud:
                    raise AudienceMismatchError
                return verified
            cache.discard(digest)  # its key was rotated out or replaced: verify afresh
        cache.count(hit=False)
        verified, key = self._decode_with_key(token, TokenKind.ACCESS, now, audience)
        cache.put(digest, verified, key, len(token))
        return verified

    def verify_batch(self, items: Sequence[VerifyItem]) -> list[VerifiedToken | AuthSidecarError]:
        """`verify` per item; an item's failure is its result, not the call's (VerifyBatch).

        More than `max_verify_batch` items is an InvalidRequestError for the whole call: the
        cap bounds the work one request can ask for.
        """
        limit = self._settings.max_verify_batch
        if len(items) > limit:
            raise InvalidRequestError(f"at most {limit} tokens per batch")
        results: list[VerifiedToken | AuthSidecarError] = []
        for token, audience, scopes in items:
            try:
                results.append(self.verify(token, audience=audience, required_scopes=scopes))
            except AuthSidecarError as error:
                results.append(error)
        return results

    async def verify_batch_refetching(
        self, items: Sequence[VerifyItem]
    ) -> list[VerifiedToken | AuthSidecarError]:
        """`verify_batch`, with `verify_refetching`'s one wait per item that failed only
        because an external issuer's new kid is not known yet, so a batch accepts exactly
        what the same Verify calls would. The refetch is single flight and rate limited per
        issuer (keys/remote.py): many such items cost at most one fetch per issuer."""
        results = self.verify_batch(items)
        issuers = self._issuers
        if issuers is None:
            return results
        max_bytes = self._settings.max_token_bytes
        for i, outcome in enumerate(results):
            if not isinstance(outcome, UnknownKeyError):
                continue
            token, audience, scopes = items[i]
            if await issuers.refetch_for(token, max_bytes=max_bytes):
                try:
                    results[i] = self.verify(token, audience=audience, required_scopes=scopes)
                except AuthSidecarError as error:
                    results[i] = error
        return results

    def _decode(
        self, token: str, kind: TokenKind, now: float, audience: str | None = None
    ) -> VerifiedToken:
        return self._decode_with_key(token, kind, now, audience)[0]

    def _decode_with_key(
        self, token: str, kind: TokenKind, now: float, audience: str | None = None
    ) -> tuple[VerifiedToken, KeyMaterial]:
        if self._issuers is not None and kind is TokenKind.ACCESS:
            return self._decode_routed(self._issuers, token, now, audience)
        jws = decode_jws(token, self._ring, max_bytes=self._settings.max_token_bytes)
        claims = self._policies[kind].validate(
            jws.header, jws.claims, kind=kind, now=now, audience=audience
        )
        return VerifiedToken(kind, jws.key.kid, claims), jws.key

    def _decode_routed(
        self, issuers: Issuers, token: str, now: float, audience: str | None
    ) -> tuple[VerifiedToken, KeyMaterial]:
        """An access token of our issuer or of an external one: `iss` picks keys and rules."""
        policy = self._policies[TokenKind.ACCESS]

        def select(claims: dict[str, Any]) -> KeyLookup:
            nonlocal policy
            issuer = issuers.route(claims)
            if issuer is None:
                return self._ring
            policy = issuer.policy
            return issuers.lookup(issuer)

        jws = decode_jws_routed(token, select, max_bytes=self._settings.max_token_bytes)
        claims = policy.validate(
            jws.header, jws.claims, kind=TokenKind.ACCESS, now=now, audience=audience
        )
        return VerifiedToken(TokenKind.ACCESS, jws.key.kid, claims), jws.key

    async def verify_refetching(
        self, token: str, *, audience: str | None = None, required_scopes: Collection[str] = ()
    ) -> VerifiedToken:
        """`verify`, except that a token of an external issuer naming a kid we do not know
        waits once for that issuer's key set to be fetched again (single flight, rate
        limited: keys/remote.py), so its first token after a rotation is accepted."""
        try:
            return self.verify(token, audience=audience, required_scopes=required_scopes)
        except UnknownKeyError:
            issuers = self._issuers
            max_bytes = self._settings.max_token_bytes
            if issuers is None or not await issuers.refetch_for(token, max_bytes=max_bytes):
                raise
        return self.verify(token, audience=audience, required_scopes=required_scopes)

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
        rotated = await self._refresher.rotate(
            claims, scope=scope, now=now, deadline_ms=self._deadline(time_left_s)
        )
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
        claims, kind = self._try_decode(token, now)
        if claims is None or kind is None:
            return Introspection(active=False)
        if self._mirror.is_revoked(claims.iss, claims.jti, claims.sid):
            return Introspection(active=False)
        if kind is TokenKind.REFRESH:
            family = await self._store.get_family(claims.sid)
            if family is None or family.revoked or family.current_jti != claims.jti:
                return Introspection(active=False)
            if now >= family.expires_at:
                return Introspection(active=False)
        return Introspection(active=True, kind=kind, claims=claims)

    def _try_decode(self, token: str, now: float) -> tuple[Claims | None, TokenKind | None]:
        try:
            jws = decode_jws(token, self._ring, max_bytes=self._settings.max_token_bytes)
            kind = _KIND_BY_TYP.get(jws.header.get("typ"))  # type: ignore[arg-type]
            if kind is None:
                return None, None
            claims = self._policies[kind].validate(jws.header, jws.claims, kind=kind, now=now)
        except TokenError:
            return None, None
        return claims, kind

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
