"""Which issuer's keys and rules apply to a token: our own, or a configured external issuer.

Used by `TokenService` only when `issuers` is configured (docs/keys.md, "External
issuers"). The token's unverified `iss`, read by the same strict parser, selects the key set
(`jws.decode_jws_routed`); the signature is then checked with that set only, and the claims
with that issuer's policy. An `iss` that is neither ours nor configured is ISSUER_MISMATCH
before any key is looked at. Key ids are per issuer: the same kid at two issuers names two
different keys, and a token can never pick a key of an issuer it does not name.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from sidecar.errors import IssuerMismatchError, TokenError
from sidecar.keys.material import KeyMaterial
from sidecar.tokens.claims import ClaimsPolicy
from sidecar.tokens.jws import KeyLookup, peek

__all__ = ["ExternalKeys", "Issuer", "Issuers"]


class ExternalKeys(Protocol):
    """An external issuer's key set (`keys.remote.RemoteKeySet`)."""

    def get(self, kid: str) -> KeyMaterial | None: ...

    def request_refetch(self, kid: str) -> asyncio.Task[bool] | None: ...

    async def refetch(self, kid: str) -> bool: ...


class _RefetchOnMiss:
    """The lookup Verify uses for an external issuer: a miss starts a (rate-limited,
    single-flight) refetch in the background and is still a miss now."""

    __slots__ = ("_keys",)

    def __init__(self, keys: ExternalKeys) -> None:
        self._keys = keys

    def get(self, kid: str) -> KeyMaterial | None:
        key = self._keys.get(kid)
        if key is None:
            self._keys.request_refetch(kid)
        return key


@dataclass(frozen=True)
class Issuer:
    name: str
    keys: ExternalKeys
    policy: ClaimsPolicy


class Issuers:
    """Our issuer (its ring is passed per call: it is swapped on reload) plus external ones."""

    def __init__(self, own_issuer: str, external: Iterable[Issuer]) -> None:
        self.own_issuer = own_issuer
        self._external = {issuer.name: issuer for issuer in external}
        self._lookups = {name: _RefetchOnMiss(i.keys) for name, i in self._external.items()}

    @property
    def external(self) -> tuple[Issuer, ...]:
        return tuple(self._external.values())

    def route(self, claims: dict[str, Any]) -> Issuer | None:
        """None for our own issuer, the external issuer named by `iss`, or ISSUER_MISMATCH."""
        iss = claims.get("iss")
        if type(iss) is not str:
            raise IssuerMismatchError
        if iss == self.own_issuer:
            return None
        issuer = self._external.get(iss)
        if issuer is None:
            raise IssuerMismatchError
        return issuer

    def lookup(self, issuer: Issuer) -> KeyLookup:
        return self._lookups[issuer.name]

    async def refetch_for(self, token: str, *, max_bytes: int) -> bool:
        """After KEY_UNKNOWN: wait for the named external issuer's refetch (if one may run);
        True when the token's kid is known now, so verifying again is worth it."""
        try:
            header, claims = peek(token, max_bytes=max_bytes)
        except TokenError:
            return False
        iss = claims.get("iss")
        issuer = self._external.get(iss) if type(iss) is str else None
        if issuer is None:
            return False
        return await issuer.keys.refetch(header["kid"])
