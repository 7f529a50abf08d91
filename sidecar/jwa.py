"""The algorithm table (RFC 7518 section 3, RFC 8037, RFC 9864): every JWS `alg` we implement.

This is the single list of algorithms. Everything that names, allows, loads, generates or
publishes an algorithm derives from it: config validation (`algorithm_names`,
`check_issuer_algorithms`), the JWS header allow-list (`HEADER_NAMES`), and through
keys/algorithms.py the key loader, the signer, the verifier, key generation and the JWKS.
An `alg` missing here ("none", "PS257", "Ed448", ...) is refused everywhere, because nothing
else holds a list to fall back on.

It is plain data and imports nothing of ours, a layer below `sidecar.keys`: sidecar/config
(config/keys.py, config/issuers.py) reads it, and keys/algorithms.py binds each entry to its
key type's `cryptography` code.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "ALGORITHMS",
    "DISTINCT_NAMES",
    "HEADER_NAMES",
    "JWK_ALIASES",
    "Algorithm",
    "Kty",
    "Scheme",
    "algorithm_names",
    "check_issuer_algorithms",
]

Kty = Literal["oct", "RSA", "EC", "OKP"]
Scheme = Literal["HMAC", "PKCS1", "PSS", "ECDSA", "EdDSA"]


@dataclass(frozen=True, slots=True)
class Algorithm:
    """One JWS algorithm and what a key must be to use it.

    `min_key_bits` is the hygiene floor checked at load time (../shared/SECURITY.md check 5):
    an HMAC secret at least the hash length (RFC 7518 section 3.2), RSA at least 2048 bits,
    EC and Ed25519 exactly their curve. `generate_bits` is what `keys generate` makes: RSA
    grows with the hash (NIST SP 800-57 part 1, table 2) so the key is never the weakest link.
    `costly_to_sign`: worth signing off the event loop's thread (tokens/signing.py; RSA-2048
    ~310 µs, P-384 ~180 µs, P-521 ~360 µs; HMAC ~3 µs, P-256 ~28 µs, Ed25519 ~85 µs).
    `recommended` follows RFC 7518's "Implementation Requirements" (Required / Recommended);
    `same_as` names the algorithm this one is another name for (RFC 9864's "Ed25519" is the
    computation RFC 8037 calls "EdDSA" over an Ed25519 key).
    """

    name: str
    kty: Kty
    scheme: Scheme
    hash_bits: int | None
    crv: str | None
    min_key_bits: int
    generate_bits: int
    costly_to_sign: bool
    recommended: bool = False
    same_as: str | None = None

    @property
    def symmetric(self) -> bool:
        """A shared secret: never published, never trusted from an issuer's JWKS."""
        return self.kty == "oct"


def _table(*entries: Algorithm) -> dict[str, Algorithm]:
    return {entry.name: entry for entry in entries}


ALGORITHMS: dict[str, Algorithm] = _table(
    Algorithm("HS256", "oct", "HMAC", 256, None, 256, 256, False, recommended=True),
    Algorithm("HS384", "oct", "HMAC", 384, None, 384, 384, False),
    Algorithm("HS512", "oct", "HMAC", 512, None, 512, 512, False),
    Algorithm("RS256", "RSA", "PKCS1", 256, None, 2048, 2048, True, recommended=True),
    Algorithm("RS384", "RSA", "PKCS1", 384, None, 2048, 3072, True),
    Algorithm("RS512", "RSA", "PKCS1", 512, None, 2048, 4096, True),
    Algorithm("PS256", "RSA", "PSS", 256, None, 2048, 2048, True),
    Algorithm("PS384", "RSA", "PSS", 384, None, 2048, 3072, True),
    Algorithm("PS512", "RSA", "PSS", 512, None, 2048, 4096, True),
    Algorithm("ES256", "EC", "ECDSA", 256, "P-256", 256, 256, False, recommended=True),
    Algorithm("ES384", "EC", "ECDSA", 384, "P-384", 384, 384, True),
    Algorithm("ES512", "EC", "ECDSA", 512, "P-521", 521, 521, True),
    # With an Ed25519 key only (Ed448 is refused: one curve, one algorithm). "EdDSA" stays
    # the name a key signs with by default: PyJWT 2.15 and other deployed verifiers know
    # only it; RFC 9864 deprecates it for "Ed25519", accepted everywhere too (issue 14).
    Algorithm("EdDSA", "OKP", "EdDSA", None, "Ed25519", 256, 256, False),
    Algorithm("Ed25519", "OKP", "EdDSA", None, "Ed25519", 256, 256, False, same_as="EdDSA"),
)

# Every `alg` a JWS header may name; the key then decides whether it is *its* algorithm.
HEADER_NAMES = frozenset(ALGORITHMS)
# One name per computation: what a benchmark or an interop matrix iterates over.
DISTINCT_NAMES = frozenset(name for name, alg in ALGORITHMS.items() if alg.same_as is None)
# Names only a JWK file may use for a table entry: RFC 7520 section 3.2's P-521 key says ES521.
JWK_ALIASES = {"ES521": "ES512"}


def algorithm_names() -> tuple[str, ...]:
    """The names, in table order: what config accepts wherever an algorithm is configured."""
    return tuple(ALGORITHMS)


def check_issuer_algorithms(names: Iterable[str]) -> tuple[str, ...]:
    """`names` as an external issuer's allow-list; ValueError for a shared-secret algorithm
    (an issuer's JWKS is public, so an HMAC key from it would be a secret anyone knows)."""
    names = tuple(names)
    for name in names:
        entry = ALGORITHMS.get(name)
        if entry is None:
            raise ValueError(f"algorithm {name!r} is not supported")
        if entry.symmetric:
            raise ValueError(f"{name} needs a shared secret; an issuer's JWKS is public")
    return names
