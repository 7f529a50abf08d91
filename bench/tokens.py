"""Key files and token pools for the benchmark, minted in-process with the sidecar's own code.

Tokens are minted by a `TokenService` on the same key file and issuer as the server under
test, so the server sees exactly what Issue would have given it, without spending the
benchmark's time on Issue calls.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt as pyjwt

from sidecar import jwa
from sidecar.clock import SystemClock
from sidecar.config import TokenSettings
from sidecar.keys.generate import generate_key, write_key_file
from sidecar.keys.material import KeyMaterial
from sidecar.keys.ring import KeyRing
from sidecar.store.memory import MemoryTokenStore
from sidecar.tokens.service import TokenService

ISSUER = "urn:authsidecar:local"
AUDIENCE = "svc"
_PRIVATE = {"d", "p", "q", "dp", "dq", "qi"}

# Every algorithm the sidecar supports, in the registry's table order (by family, then hash
# size): the order of the report's tables. "Ed25519", RFC 9864's name for EdDSA, is the
# same computation: measured once, as EdDSA.
ALGORITHMS = tuple(name for name in jwa.ALGORITHMS if name in jwa.DISTINCT_NAMES)


@dataclass
class Minted:
    alg: str
    key_path: Path
    jwk: dict[str, Any]
    signing_key: KeyMaterial
    issuer: str = ISSUER
    tokens: list[str] = field(default_factory=list)

    @property
    def public_jwk(self) -> dict[str, Any]:
        if jwa.ALGORITHMS[self.alg].symmetric:
            return dict(self.jwk)
        return {k: v for k, v in self.jwk.items() if k not in _PRIVATE}

    @property
    def crypto_key(self) -> Any:
        """The raw key under the JWK: HMAC secret bytes or a cryptography private key."""
        return pyjwt.PyJWK(self.jwk, self.alg).key

    @property
    def sample_claims(self) -> dict[str, Any]:
        return {
            "iss": self.issuer,
            "sub": "bench-user",
            "aud": [AUDIENCE],
            "exp": 4_000_000_000,
            "iat": 1_700_000_000,
            "jti": "0123456789abcdef0123456789abcdef",
            "scope": "read write",
            "client_id": "bench",
        }

    def service(
        self, *, cache_entries: int = 10_000, settings: TokenSettings | None = None
    ) -> TokenService:
        settings = settings or TokenSettings(verify_cache_entries=cache_entries)
        return TokenService(
            ring=KeyRing([self.signing_key]),
            store=MemoryTokenStore(),
            settings=settings.options(),
            clock=SystemClock(),
        )

    async def mint_many(self, count: int) -> list[str]:
        service = self.service(cache_entries=0)
        tokens = []
        for _ in range(count):
            grant = await service.issue(
                subject="bench-user",
                audience=[AUDIENCE],
                scope="read write",
                client_id="bench",
                expires_in=3600,
            )
            tokens.append(grant.access_token)
        return tokens


def make_key(directory: Path, alg: str, pool: int) -> Minted:
    material, jwk = generate_key(alg)
    path = directory / f"{alg.lower()}.jwk.json"
    write_key_file(path, jwk)
    minted = Minted(alg, path, jwk, material)
    minted.tokens = asyncio.run(minted.mint_many(pool))
    return minted
