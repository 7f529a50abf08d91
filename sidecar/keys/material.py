"""One key, one algorithm: the only place key material meets python-jose.

Every key the sidecar holds is a `KeyMaterial`: a `kid`, exactly one `alg`, and pre-built
python-jose key objects (building them per call costs ~36 ms for an RSA PEM). The hygiene
rules of ../shared/SECURITY.md are enforced here, at construction, so a weak or mismatched
key stops start-up instead of weakening verification:

* RSA moduli of at least 2048 bits;
* an EC key's curve must be the curve of its algorithm (ES256 on P-256, ...);
* an HMAC secret at least as long as the hash output (RFC 7518 section 3.2);
* `kid` a non-empty printable string.

Verification always goes through a *public* key object (python-jose re-derives the public
key and warns on every call when handed a private one).
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jose.backends.cryptography_backend import (  # type: ignore[import-untyped]
    CryptographyECKey,
    CryptographyHMACKey,
    CryptographyRSAKey,
)

from sidecar.errors import KeyMaterialError

KeyType = Literal["oct", "RSA", "EC"]

HMAC_ALGS = frozenset({"HS256", "HS384", "HS512"})
RSA_ALGS = frozenset({"RS256", "RS384", "RS512"})
EC_ALGS = frozenset({"ES256", "ES384", "ES512"})
SUPPORTED_ALGS = HMAC_ALGS | RSA_ALGS | EC_ALGS

MIN_RSA_BITS = 2048
MAX_KID_LENGTH = 256
_HASH_BYTES = {"256": 32, "384": 48, "512": 64}
_EC_CURVES: dict[str, tuple[type[ec.EllipticCurve], str]] = {
    "ES256": (ec.SECP256R1, "P-256"),
    "ES384": (ec.SECP384R1, "P-384"),
    "ES512": (ec.SECP521R1, "P-521"),
}
# The algorithm a key implies when its file does not say (PEM has no `alg`).
DEFAULT_EC_ALG = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}

RsaKey = rsa.RSAPrivateKey | rsa.RSAPublicKey
EcKey = ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey


def _b64url_uint(value: int) -> str:
    raw = value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64url_fixed(value: int, size: int) -> str:
    return base64.urlsafe_b64encode(value.to_bytes(size, "big")).rstrip(b"=").decode("ascii")


def _check_kid(kid: object) -> str:
    if not isinstance(kid, str) or not kid or len(kid) > MAX_KID_LENGTH:
        raise KeyMaterialError(f"key id must be a non-empty string of at most {MAX_KID_LENGTH} characters")
    if not kid.isprintable():
        raise KeyMaterialError("key id must be printable")
    return kid


@dataclass(frozen=True, eq=False)
class KeyMaterial:
    """A loaded key. `can_sign` is true only for private asymmetric keys and HMAC secrets."""

    kid: str
    alg: str
    kty: KeyType
    can_sign: bool
    # RFC 7638 thumbprint of the public key (the secret's hash for HMAC): identifies the key
    # itself, so a reload can tell a changed key from a renamed one.
    thumbprint: str
    _verifier: Any = field(repr=False)
    _signer: Any = field(repr=False, default=None)
    _public_jwk: dict[str, str] | None = field(repr=False, default=None)

    @property
    def symmetric(self) -> bool:
        return self.kty == "oct"

    def sign(self, signing_input: bytes) -> bytes:
        if self._signer is None:
            raise KeyMaterialError(f"key {self.kid!r} is verification-only")
        signature: bytes = self._signer.sign(signing_input)
        return signature

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


def hmac_key(secret: bytes, alg: str, kid: str) -> KeyMaterial:
    """An HMAC key; refuses secrets shorter than the hash (RFC 7518 section 3.2)."""
    kid = _check_kid(kid)
    if alg not in HMAC_ALGS:
        raise KeyMaterialError(f"key {kid!r}: algorithm {alg!r} is not an HMAC algorithm")
    need = _HASH_BYTES[alg[2:]]
    if len(secret) < need:
        raise KeyMaterialError(
            f"key {kid!r}: {alg} secret is {len(secret)} bytes, at least {need} are required"
        )
    try:
        jose_key = CryptographyHMACKey(secret, alg)
    except Exception as exc:  # noqa: BLE001 - jose refuses PEM-looking secrets, among others
        raise KeyMaterialError(f"key {kid!r}: unusable HMAC secret") from exc
    digest = hashlib.sha256(b"authsidecar-hmac-kid:" + secret).digest()
    thumb = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
    return KeyMaterial(kid, alg, "oct", True, thumb, jose_key, jose_key, None)


def asymmetric_key(key: object, alg: str, kid: str) -> KeyMaterial:
    """An RSA or EC key (private: signs and verifies; public: verifies only)."""
    kid = _check_kid(kid)
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return _rsa_key(key, alg, kid)
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return _ec_key(key, alg, kid)
    raise KeyMaterialError(f"key {kid!r}: only RSA and EC keys are supported")


def _rsa_key(key: RsaKey, alg: str, kid: str) -> KeyMaterial:
    if alg not in RSA_ALGS:
        raise KeyMaterialError(f"key {kid!r}: an RSA key cannot be used with {alg!r}")
    if key.key_size < MIN_RSA_BITS:
        raise KeyMaterialError(
            f"key {kid!r}: RSA key is {key.key_size} bits, at least {MIN_RSA_BITS} are required"
        )
    public = key.public_key() if isinstance(key, rsa.RSAPrivateKey) else key
    numbers = public.public_numbers()
    jwk = {"kty": "RSA", "e": _b64url_uint(numbers.e), "n": _b64url_uint(numbers.n)}
    signer = CryptographyRSAKey(key, alg) if isinstance(key, rsa.RSAPrivateKey) else None
    return KeyMaterial(
        kid,
        alg,
        "RSA",
        signer is not None,
        _thumbprint(jwk),
        CryptographyRSAKey(public, alg),
        signer,
        {**jwk, "kid": kid, "alg": alg, "use": "sig"},
    )


def _ec_key(key: EcKey, alg: str, kid: str) -> KeyMaterial:
    if alg not in EC_ALGS:
        raise KeyMaterialError(f"key {kid!r}: an EC key cannot be used with {alg!r}")
    curve_type, crv = _EC_CURVES[alg]
    if not isinstance(key.curve, curve_type):
        raise KeyMaterialError(f"key {kid!r}: {alg} requires curve {crv}, not {key.curve.name}")
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    numbers = public.public_numbers()
    size = (key.curve.key_size + 7) // 8
    jwk = {
        "crv": crv,
        "kty": "EC",
        "x": _b64url_fixed(numbers.x, size),
        "y": _b64url_fixed(numbers.y, size),
    }
    signer = CryptographyECKey(key, alg) if isinstance(key, ec.EllipticCurvePrivateKey) else None
    return KeyMaterial(
        kid,
        alg,
        "EC",
        signer is not None,
        _thumbprint(jwk),
        CryptographyECKey(public, alg),
        signer,
        {**jwk, "kid": kid, "alg": alg, "use": "sig"},
    )


def _thumbprint(required_members: dict[str, str]) -> str:
    """RFC 7638: SHA-256 over the required members, sorted, without white space."""
    canonical = json.dumps(required_members, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
