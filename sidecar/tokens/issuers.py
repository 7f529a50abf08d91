"""Whose keys and rules verify a token: our own, or a configured external issuer's.

The key step of verification (tokens/verifier.py) when `issuers` is configured (docs/keys.md,
"External issuers"). A token is an external issuer's exactly when its `iss` is a string equal
to one configured external issuer's name; every other token (our `iss`, a foreign one, none,
a non-string one, a payload that is not a claim set at all) is verified as if no external
issuer were configured: our key ring, our rules, the same reason in the same order. So
configuring an issuer changes the outcome only for that issuer's tokens.

Reading `iss` is the one use of the unverified payload, and it happens only after the
header and `kid` checks (jws.parse_compact); the claim set parsed on the way is handed on,
so the claim rules after the signature check do not parse it again. Keys never cross
issuers: a kid is looked up only in the key set of the issuer the token names.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from sidecar.errors import ClaimError, TokenError
from sidecar.keys.material import KeyMaterial
from sidecar.strict_json import parse_claims, unverified_issuer
from sidecar.tokens.claims import ClaimsPolicy

__all__ = ["ExternalKeys", "Issuer", "Issuers"]


class ExternalKeys(Protocol):
    """An external issuer's key set (`keys.remote.RemoteKeySet`)."""

    def get(self, kid: str) -> KeyMaterial | None: ...

    def request_refetch(self, kid: str) -> asyncio.Task[bool] | None: ...

    async def refetch(self, kid: str) -> bool: ...


@dataclass(frozen=True, eq=False)
class Issuer:
    name: str
    keys: ExternalKeys
    policy: ClaimsPolicy

    def get(self, kid: str) -> KeyMaterial | None:
        """The key `kid` names; a miss starts a (rate-limited, single-flight) refetch in the
        background (keys/remote.py) and is still a miss now."""
        key = self.keys.get(kid)
        if key is None:
            self.keys.request_refetch(kid)
        return key


class Issuers:
    """The configured external issuers, by exact name."""

    def __init__(self, own_issuer: str, external: Iterable[Issuer]) -> None:
        self.own_issuer = own_issuer
        self._external = {issuer.name: issuer for issuer in external}

    @property
    def external(self) -> tuple[Issuer, ...]:
        return tuple(self._external.values())

    def route(self, payload: bytes) -> tuple[Issuer | None, dict[str, Any] | None]:
        """(the external issuer the unverified `iss` names, or None for everything else;
        the claim set if it parsed strictly, else None: its refusal comes after the
        signature, from the claim step, exactly as without external issuers)."""
        try:
            claims = parse_claims(payload)
        except ClaimError:  # a number out of range: still say whose token it claims to be
            return self._external.get(unverified_issuer(payload) or ""), None
        except TokenError:
            return None, None
        iss = claims.get("iss")
        return (self._external.get(iss) if type(iss) is str else None), claims
