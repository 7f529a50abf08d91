"""Revoke (RFC 7009): revoking an invalid, foreign or already revoked token succeeds quietly.

Only the signature is required: an expired token may still be revoked (a no-op in effect),
but a token we did not sign revokes nothing. An access token is revoked by `jti` until it
expires; a refresh token revokes its whole family at the family's full horizon
(`refresh.family_revocation`). The store write comes first, then the local mirror; a
StoreUnavailableError means not revoked (the write has a deadline, `time_left_s` bounds it).
"""

from __future__ import annotations

from collections.abc import Callable

from sidecar.clock import Clock
from sidecar.errors import InvalidRequestError, TokenError
from sidecar.keys.ring import KeyRing
from sidecar.store.base import Revocation, TokenStore, deadline_for
from sidecar.tokens.jws import decode_jws
from sidecar.tokens.model import TokenKind
from sidecar.tokens.options import TokenOptions
from sidecar.tokens.refresh import family_revocation
from sidecar.tokens.revocation import RevocationMirror


class RevokeFlow:
    def __init__(
        self,
        *,
        ring: Callable[[], KeyRing],
        store: TokenStore,
        mirror: RevocationMirror,
        options: TokenOptions,
        clock: Clock,
    ) -> None:
        self._ring = ring
        self._store = store
        self._mirror = mirror
        self._options = options
        self._clock = clock

    async def revoke(self, token: str, *, time_left_s: float | None = None) -> None:
        if not token:
            raise InvalidRequestError("token required")
        options = self._options
        try:
            jws = decode_jws(token, self._ring(), max_bytes=options.max_token_bytes)
        except TokenError:
            return
        claims = jws.claims
        iss, jti, exp = claims.get("iss"), claims.get("jti"), claims.get("exp")
        if iss != options.issuer or not isinstance(jti, str) or not jti:
            return
        until = int(self._clock.now()) + options.family_ttl_s
        if isinstance(exp, int | float) and not isinstance(exp, bool):
            until = int(exp) + options.leeway_s
        typ = jws.header.get("typ")
        if typ == TokenKind.ACCESS.typ:
            revocation = Revocation("jti", iss, jti, until)
        elif typ == TokenKind.REFRESH.typ and isinstance(claims.get("sid"), str):
            family = await self._store.get_family(claims["sid"])
            end = family.expires_at if family is not None else until
            revocation = family_revocation(options, iss, claims["sid"], end)
        else:
            return
        deadline_ms = deadline_for(self._clock.now(), self._store.timeout_s, time_left_s)
        await self._store.revoke(revocation, deadline_ms=deadline_ms)
        self._mirror.add(revocation)
