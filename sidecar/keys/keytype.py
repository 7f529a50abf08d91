"""What every key type (oct, RSA, EC, OKP) provides, typed, so the registry holds them alike.

A key type turns the key objects `cryptography` builds (from PEM, from JWK members, or fresh)
into a `BuiltKey` for one table entry (sidecar/jwa.py): the hygiene checks of
../shared/SECURITY.md pass or `KeyMaterialError` is raised, and the result is a `Verifier`,
a `Signer` (private keys and secrets only) and the public JWK members. Nothing crossing a
module boundary is `Any`: `KeyMaterial` holds these protocols, not library objects.

The JWK member readers live here because every key type reads members the same strict way:
canonical unpadded base64url (sidecar/b64url.py), integers without leading zero octets (RFC
7518 section 6.3.1.1) unless their size is fixed (EC coordinates, 6.2.1.2).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from sidecar import b64url
from sidecar.errors import KeyMaterialError
from sidecar.jwa import Algorithm

__all__ = [
    "BuiltKey",
    "KeyObject",
    "KeyType",
    "PrivateKey",
    "Signer",
    "Verifier",
    "hash_of",
    "jwk_bytes",
    "jwk_uint",
    "thumbprint",
]

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
# bytes: an HMAC secret.
KeyObject = bytes | PrivateKey | PublicKey


class Verifier(Protocol):
    """Checks a signature; True only for a valid one. May raise on hostile input:
    `KeyMaterial.verify` turns any exception into False."""

    def verify(self, msg: bytes, sig: bytes) -> bool: ...


class Signer(Protocol):
    """Signs a JWS signing input with the key and algorithm it was built for."""

    def sign(self, msg: bytes) -> bytes: ...


@dataclass(frozen=True, slots=True)
class BuiltKey:
    """A key bound to one algorithm. `public_members` are the JWK members of the public key
    (None for a secret, which is never published); `thumbprint` is RFC 7638's (a hash of the
    secret for HMAC) and identifies the key itself across reloads."""

    verifier: Verifier
    signer: Signer | None
    thumbprint: str
    public_members: dict[str, str] | None


class KeyType(Protocol):
    """One JWK `kty`: everything the registry needs from it."""

    kty: str
    noun: str  # for messages: "an RSA key cannot be used with 'HS256'"
    private_members: frozenset[str]  # JWK members only a private key (or a secret) has

    def owns(self, key: object) -> bool:
        """True when `key` (a parsed PEM, say) is this type's key object."""
        ...

    def pem_alg(self, key: object) -> str | None:
        """The algorithm a PEM key implies when none is configured (PEM has no `alg`)."""
        ...

    def build(self, key: object, alg: Algorithm, who: str) -> BuiltKey:
        """Hygiene checks for `alg`, then the pre-built signer and verifier."""
        ...

    def from_jwk(self, jwk: Mapping[str, object], who: str, private: bool) -> KeyObject:
        """The key object of a JWK's members, refusing malformed or inconsistent ones."""
        ...

    def generate(self, alg: Algorithm) -> bytes | PrivateKey:
        """A fresh private key (or secret) of the size `alg` is generated with."""
        ...

    def private_jwk(self, key: object, alg: Algorithm) -> dict[str, str]:
        """The private JWK members of `key` (without kid/alg/use)."""
        ...


_HASHES: dict[int, type[hashes.SHA256 | hashes.SHA384 | hashes.SHA512]] = {
    256: hashes.SHA256,
    384: hashes.SHA384,
    512: hashes.SHA512,
}


def hash_of(alg: Algorithm) -> hashes.SHA256 | hashes.SHA384 | hashes.SHA512:
    """A fresh hash object of the SHA-2 size `alg` names (HS/RS/PS/ES 256/384/512)."""
    if alg.hash_bits is None:
        raise ValueError(f"{alg.name} names no hash")
    return _HASHES[alg.hash_bits]()


def jwk_bytes(jwk: Mapping[str, object], name: str, who: str) -> bytes:
    """Member `name`, decoded; its only spelling (canonical unpadded base64url)."""
    value = jwk.get(name)
    if not isinstance(value, str):
        raise KeyMaterialError(f"{who}: member {name!r} missing or not a string")
    try:
        return b64url.decode_text(value)
    except ValueError as exc:
        raise KeyMaterialError(f"{who}: member {name!r} is {exc}") from exc


def jwk_uint(jwk: Mapping[str, object], name: str, who: str, size: int | None = None) -> int:
    """Member `name` as an unsigned big-endian integer (exactly `size` octets when given)."""
    raw = jwk_bytes(jwk, name, who)
    if not raw:
        raise KeyMaterialError(f"{who}: member {name!r} is empty")
    if size is not None and len(raw) != size:
        raise KeyMaterialError(f"{who}: member {name!r} must be {size} octets long")
    if size is None and raw[0] == 0:
        raise KeyMaterialError(f"{who}: member {name!r} has leading zero octets")
    return int.from_bytes(raw, "big")


def thumbprint(required_members: Mapping[str, str]) -> str:
    """RFC 7638: SHA-256 over the required members, sorted, without white space."""
    canonical = json.dumps(dict(required_members), sort_keys=True, separators=(",", ":"))
    return b64url.encode_text(hashlib.sha256(canonical.encode("utf-8")).digest())
