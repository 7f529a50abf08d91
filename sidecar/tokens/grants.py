"""Minting a grant: the access token (and refresh token) Issue and Refresh hand out.

Shared by both flows (tokens/issue.py, tokens/refresh.py): the claims come from
tokens/minting.py, the signing key is the ring's signing key at the moment each token is
built (chosen once per token, so a key swap mid-call changes nothing about it), and the
signatures are computed by the `Signer` (in place or on its threads).
"""

from __future__ import annotations

from collections.abc import Callable

from sidecar.errors import KeyMaterialError
from sidecar.keys.material import KeyMaterial
from sidecar.keys.ring import KeyRing
from sidecar.store.base import FamilyRecord
from sidecar.tokens import minting
from sidecar.tokens.model import TokenGrant, TokenKind
from sidecar.tokens.options import TokenOptions
from sidecar.tokens.signing import Signer, SignJob


class Minter:
    """Builds and signs the tokens of a grant with the current signing key."""

    def __init__(
        self, *, ring: Callable[[], KeyRing], options: TokenOptions, signer: Signer
    ) -> None:
        self._ring = ring
        self._options = options
        self._signer = signer

    def access_token(self, request: minting.IssueRequest, now: int, family_id: str = "") -> SignJob:
        """The access token to sign; the signing key is chosen here, once per token."""
        claims = minting.access_claims(
            issuer=self._options.issuer,
            request=request,
            extra=request.extra_claims,
            jti=minting.new_id(),
            now=now,
            ttl_s=request.expires_in,
            family_id=family_id,
        )
        return SignJob(claims, self._signing_key(), TokenKind.ACCESS.typ)

    def refresh_token(self, family: FamilyRecord, jti: str, now: int) -> SignJob:
        """Refresh token `jti` of `family`, minted at `now`; it never outlives the family."""
        exp = min(now + self._options.refresh_ttl_s, family.expires_at)
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

    async def sign(
        self,
        request: minting.IssueRequest,
        access: SignJob,
        refresh: SignJob | None = None,
        *,
        outcome: str = "",
    ) -> TokenGrant:
        """Sign the access token (and the refresh token, together: one hand-off) and return
        the grant; `outcome` is Refresh's ("rotated" or "grace")."""
        refresh_token = ""
        if refresh is None:
            (access_token,) = await self._signer.encode_all((access,))
        else:
            access_token, refresh_token = await self._signer.encode_all((access, refresh))
        return TokenGrant(
            access_token,
            request.expires_in,
            request.scope,
            refresh_token,
            subject=access.claims["sub"],
            jti=access.claims["jti"],
            outcome=outcome,
        )

    def _signing_key(self) -> KeyMaterial:
        key = self._ring().signing_key
        if key is None:
            raise KeyMaterialError("no signing key is configured")
        return key
