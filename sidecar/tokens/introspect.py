"""Introspect (RFC 7662): is this token active right now, and what does it say.

Any reason a token is not good is just `active: false`: nothing leaks about why. The token
goes through the verifier's one path (tokens/verifier.py), then the revocation mirror, and
for a refresh token the store's family record (only the family's current refresh token is
active).
"""

from __future__ import annotations

from sidecar.clock import Clock
from sidecar.errors import InvalidRequestError
from sidecar.store.base import TokenStore
from sidecar.tokens.model import Introspection, TokenKind
from sidecar.tokens.revocation import RevocationMirror
from sidecar.tokens.verifier import Verifier


class IntrospectFlow:
    def __init__(
        self, *, verifier: Verifier, mirror: RevocationMirror, store: TokenStore, clock: Clock
    ) -> None:
        self._verifier = verifier
        self._mirror = mirror
        self._store = store
        self._clock = clock

    async def introspect(self, token: str) -> Introspection:
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
