"""Elliptic-curve keys (`kty` "EC", RFC 7518 sections 3.4 and 6.2): ES256, ES384, ES512.

One curve per algorithm, the table's `crv` (ES256 on P-256, ES384 on P-384, ES512 on P-521):
a key on another curve is refused at load time, never used with a hash it was not made for.
JWK coordinates have exactly the curve's length (RFC 7518 section 6.2.1.2), and `cryptography`
refuses a point that is not on the curve (invalid-curve attacks). Signatures go through
python-jose's `CryptographyECKey`, built once, which speaks JWS's raw R || S form.
"""

from __future__ import annotations

from collections.abc import Mapping

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from jose.backends.cryptography_backend import CryptographyECKey

from sidecar import b64url
from sidecar.errors import KeyMaterialError
from sidecar.jwa import ALGORITHMS, Algorithm
from sidecar.keys.keytype import BuiltKey, jwk_uint, thumbprint

__all__ = ["EC", "EcKeyType"]

EcKey = ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey
_CURVES: dict[str, ec.EllipticCurve] = {
    "P-256": ec.SECP256R1(),
    "P-384": ec.SECP384R1(),
    "P-521": ec.SECP521R1(),
}
_CRV_BY_CURVE_NAME = {curve.name: crv for crv, curve in _CURVES.items()}


def _size(curve: ec.EllipticCurve) -> int:
    return (curve.key_size + 7) // 8


class EcKeyType:
    kty = "EC"
    noun = "an EC key"
    private_members = frozenset({"d"})  # RFC 7518 section 6.2.2

    def owns(self, key: object) -> bool:
        return isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey)

    def pem_alg(self, key: object) -> str | None:
        """The table's algorithm for the key's curve (None for curves we do not use)."""
        if not isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
            return None
        crv = _CRV_BY_CURVE_NAME.get(key.curve.name)
        return next((a.name for a in ALGORITHMS.values() if a.kty == "EC" and a.crv == crv), None)

    def build(self, key: object, alg: Algorithm, who: str) -> BuiltKey:
        if not isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
            raise KeyMaterialError(f"{who}: {alg.name} needs an EC key")
        if _CRV_BY_CURVE_NAME.get(key.curve.name) != alg.crv:
            raise KeyMaterialError(
                f"{who}: {alg.name} requires curve {alg.crv}, not {key.curve.name}"
            )
        public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
        numbers, size = public.public_numbers(), _size(key.curve)
        members = {
            "crv": str(alg.crv),
            "kty": "EC",
            "x": b64url.encode_uint(numbers.x, size),
            "y": b64url.encode_uint(numbers.y, size),
        }
        private = isinstance(key, ec.EllipticCurvePrivateKey)
        signer = CryptographyECKey(key, alg.name) if private else None
        return BuiltKey(CryptographyECKey(public, alg.name), signer, thumbprint(members), members)

    def from_jwk(self, jwk: Mapping[str, object], who: str, private: bool) -> EcKey:
        crv = jwk.get("crv")
        if not isinstance(crv, str) or crv not in _CURVES:
            raise KeyMaterialError(f"{who}: curve {crv!r} is not supported")
        curve = _CURVES[crv]
        size = _size(curve)
        x, y = jwk_uint(jwk, "x", who, size), jwk_uint(jwk, "y", who, size)
        try:
            # cryptography refuses a point that is not on the curve (invalid-curve attacks).
            public = ec.EllipticCurvePublicNumbers(x, y, curve).public_key()
            if not private:
                return public
            key = ec.derive_private_key(jwk_uint(jwk, "d", who, size), curve)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise KeyMaterialError(f"{who}: EC key is not a valid {crv} key") from exc
        if key.public_key().public_numbers() != public.public_numbers():
            raise KeyMaterialError(f"{who}: EC private key 'd' does not match 'x'/'y'")
        return key

    def generate(self, alg: Algorithm) -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(_CURVES[str(alg.crv)])

    def private_jwk(self, key: object, alg: Algorithm) -> dict[str, str]:
        """RFC 7518 section 6.2.2: the public members and `d`, all at the curve's length."""
        if not isinstance(key, ec.EllipticCurvePrivateKey) or alg.crv is None:
            raise KeyMaterialError(f"{alg.name} needs an EC private key")
        if _CRV_BY_CURVE_NAME.get(key.curve.name) != alg.crv:
            raise KeyMaterialError(f"an EC key on {key.curve.name} cannot be used with {alg.name}")
        size, priv = _size(key.curve), key.private_numbers()
        return {
            "kty": "EC",
            "crv": alg.crv,
            "x": b64url.encode_uint(priv.public_numbers.x, size),
            "y": b64url.encode_uint(priv.public_numbers.y, size),
            "d": b64url.encode_uint(priv.private_value, size),
        }


EC = EcKeyType()
