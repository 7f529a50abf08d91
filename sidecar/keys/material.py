"""One key, one algorithm: what the sidecar holds for every key it signs or verifies with.

Every key is a `KeyMaterial`: a `kid`, exactly one `alg`, and a pre-built `Verifier` (and a
`Signer` for private keys and secrets); building them per call costs ~36 ms for an RSA PEM.
The key is bound to its algorithm by the registry (keys/algorithms.py), which applies the
hygiene rules of ../shared/SECURITY.md at construction, so a weak or mismatched key stops
start-up instead of weakening verification:

* RSA moduli of at least 2048 bits, and not ROCA-vulnerable (CVE-2017-15361);
* an EC key's curve must be the curve of its algorithm (ES256 on P-256, ...);
* an HMAC secret at least as long as the hash output (RFC 7518 section 3.2);
* EdDSA only with an Ed25519 key (RFC 8037; Ed448 is not supported), PS* only with RSA;
* `kid` a non-empty printable string (checked here).

Verification always goes through a *public* key object (python-jose re-derives the public
key and warns on every call when handed a private one).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sidecar.errors import KeyMaterialError
from sidecar.jwa import ALGORITHMS, Kty
from sidecar.keys.algorithms import bind, header_names
from sidecar.keys.keytype import Signer, Verifier

__all__ = ["MAX_KID_LENGTH", "KeyMaterial", "asymmetric_key", "build_key", "hmac_key"]

MAX_KID_LENGTH = 256


def _check_kid(kid: object) -> str:
    if not isinstance(kid, str) or not kid or len(kid) > MAX_KID_LENGTH:
        raise KeyMaterialError(
            f"key id must be a non-empty string of at most {MAX_KID_LENGTH} characters"
        )
    if not kid.isprintable():
        raise KeyMaterialError("key id must be printable")
    return kid


@dataclass(frozen=True, eq=False)
class KeyMaterial:
    """A loaded key. `can_sign` is true only for private asymmetric keys and HMAC secrets.

    `header_algs` and `costly_to_sign` are derived from the registry once, here: both are
    read on hot paths (every Verify, every Issue).
    """

    kid: str
    alg: str
    kty: Kty
    can_sign: bool
    # RFC 7638 thumbprint of the public key (the secret's hash for HMAC): identifies the key
    # itself, so a reload can tell a changed key from a renamed one.
    thumbprint: str
    _verifier: Verifier = field(repr=False)
    _signer: Signer | None = field(repr=False, default=None)
    _public_jwk: dict[str, str] | None = field(repr=False, default=None)
    # The JWS `alg` values that name this key's algorithm: `{alg}`, or both "EdDSA" and
    # "Ed25519" for an Ed25519 key (RFC 9864). The key, not the token, still fixes the
    # computation (RFC 8725 section 3.1).
    header_algs: frozenset[str] = field(init=False)
    # True when a signature is worth computing off the event loop's thread.
    costly_to_sign: bool = field(init=False)

    def __post_init__(self) -> None:
        alg = ALGORITHMS[self.alg]
        object.__setattr__(self, "header_algs", header_names(alg))
        object.__setattr__(self, "costly_to_sign", self.can_sign and alg.costly_to_sign)

    @property
    def symmetric(self) -> bool:
        return self.kty == "oct"

    def sign(self, signing_input: bytes) -> bytes:
        if self._signer is None:
            raise KeyMaterialError(f"key {self.kid!r} is verification-only")
        return self._signer.sign(signing_input)

    def verify(self, signing_input: bytes, signature: bytes) -> bool:
        """True only for a valid signature; never raises for a bad one."""
        try:
            return bool(self._verifier.verify(signing_input, signature))
        except Exception:  # noqa: BLE001 - any library failure on hostile input is "invalid"
            return False

    def public_jwk(self) -> dict[str, str] | None:
        """The JWK to publish (RFC 7517), or None for a secret that must never leave."""
        if self._public_jwk is None:
            return None
        return dict(self._public_jwk)


def build_key(key: object, alg: str, kid: str) -> KeyMaterial:
    """`key` (a `cryptography` key object or an HMAC secret's bytes) as `kid`, bound to
    `alg` by the registry; KeyMaterialError names the kid and the rule that failed."""
    kid = _check_kid(kid)
    entry, built = bind(key, alg, f"key {kid!r}")
    published = None
    if built.public_members is not None:
        published = {**built.public_members, "kid": kid, "alg": entry.name, "use": "sig"}
    return KeyMaterial(
        kid,
        entry.name,
        entry.kty,
        built.signer is not None,
        built.thumbprint,
        built.verifier,
        built.signer,
        published,
    )


def hmac_key(secret: bytes, alg: str, kid: str) -> KeyMaterial:
    """An HMAC key; refuses secrets shorter than the hash (RFC 7518 section 3.2)."""
    if not isinstance(secret, bytes):
        raise KeyMaterialError(f"key {kid!r}: an HMAC secret must be bytes")
    return build_key(secret, alg, kid)


def asymmetric_key(key: object, alg: str, kid: str) -> KeyMaterial:
    """An RSA, EC or Ed25519 key (private: signs and verifies; public: verifies only)."""
    if isinstance(key, bytes):
        raise KeyMaterialError(f"key {kid!r}: a secret is not an asymmetric key")
    return build_key(key, alg, kid)
