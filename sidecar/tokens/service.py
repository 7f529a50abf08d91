"""TokenService: the token engine's front door, knowing nothing of gRPC.

One method per RPC, each handed to the module that owns its flow (fosite's one flow per
file):

    verify, verify_batch, *_refetching   tokens/verifier.py   (the hot path)
    issue                                tokens/issue.py
    refresh                              tokens/refresh.py
    introspect                           tokens/introspect.py
    revoke                               tokens/revoke.py

This module only builds those flows from the parts they share (the key ring, the store, the
revocation mirror, the signer, the event log) and swaps the key ring on reload. Verify is
synchronous on purpose and never touches the store, so a slow or absent store cannot slow
or stop it; everything that changes state is async and goes through the `TokenStore`, which
owns atomicity.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from sidecar.clock import Clock
from sidecar.errors import AuthSidecarError
from sidecar.keys.ring import KeyRing
from sidecar.store.base import TokenStore
from sidecar.tokens.cache import VerifyCache
from sidecar.tokens.claims import ClaimsPolicy
from sidecar.tokens.event_log import EventLog
from sidecar.tokens.events import retired_kids
from sidecar.tokens.grants import Minter
from sidecar.tokens.introspect import IntrospectFlow
from sidecar.tokens.issue import IssueFlow
from sidecar.tokens.issuers import Issuers
from sidecar.tokens.model import TokenKind, VerifiedToken
from sidecar.tokens.options import TokenOptions
from sidecar.tokens.refresh import Refresher
from sidecar.tokens.revocation import RevocationMirror
from sidecar.tokens.revoke import RevokeFlow
from sidecar.tokens.signing import Signer
from sidecar.tokens.store_sync import StoreSync
from sidecar.tokens.verifier import Verifier, VerifyItem


class TokenService:
    def __init__(
        self,
        *,
        ring: KeyRing,
        store: TokenStore,
        settings: TokenOptions,
        clock: Clock,
        issuers: Issuers | None = None,
        signer: Signer | None = None,
        events: EventLog | None = None,
    ) -> None:
        self._ring = ring
        self._store = store
        self._settings = settings
        self._mirror = RevocationMirror()
        # What the Watch stream sends (tokens/event_log.py): fed by the mirror and by key-ring
        # swaps, each after the change is in force here.
        self._events = events or EventLog()
        self._mirror.on_new = self._events.publish_revocations
        self._mirror.on_reset = self._events.publish_reset
        self._sync = StoreSync(store, self._mirror, clock)
        self._verifier = Verifier(
            ring=ring,
            policies=_policies(settings),
            clock=clock,
            revocations=self._mirror,
            cache=VerifyCache(
                max_entries=settings.verify_cache_entries, max_bytes=settings.verify_cache_bytes
            ),
            max_token_bytes=settings.max_token_bytes,
            max_batch=settings.max_verify_batch,
            # External issuers whose access tokens Verify accepts (tokens/issuers.py); None:
            # only our own tokens, and verification is exactly as without the feature.
            issuers=issuers,
        )
        # Where signatures are computed (tokens/signing.py); its owner (the app) closes it.
        # None: every signature in place, on the calling thread.
        minter = Minter(ring=self._current_ring, options=settings, signer=signer or Signer(0))
        # The flows that change or read state, one module each (see the module docstring):
        # their own methods, bound here, so a call goes straight to the flow.
        self.issue = IssueFlow(store=store, options=settings, clock=clock, minter=minter).issue
        self.refresh = Refresher(
            store=store,
            mirror=self._mirror,
            settings=settings,
            verifier=self._verifier,
            minter=minter,
            clock=clock,
        ).refresh
        self.introspect = IntrospectFlow(
            verifier=self._verifier, mirror=self._mirror, store=store, clock=clock
        ).introspect
        self.revoke = RevokeFlow(
            ring=self._current_ring, store=store, mirror=self._mirror, options=settings, clock=clock
        ).revoke

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
    def events(self) -> EventLog:
        return self._events

    @property
    def store_sync(self) -> StoreSync:
        """The mirror's reconciliation with the store: epoch, restored revocations."""
        return self._sync

    def _current_ring(self) -> KeyRing:
        return self._ring

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

    def jwks(self) -> dict[str, Any]:
        return self._ring.jwks()

    def can_sign(self) -> bool:
        """False on a verify-only sidecar (issue 14): it has no key to mint with."""
        return self._ring.signing_key is not None


def _policies(settings: TokenOptions) -> dict[TokenKind, ClaimsPolicy]:
    """The claim rules of our own tokens, by kind."""
    max_lifetime = max(settings.max_access_ttl_s, settings.refresh_ttl_s)
    return {
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
