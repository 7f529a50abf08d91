"""Ed25519 keys (`kty` "OKP", RFC 8037): the algorithm "EdDSA", or its RFC 9864 name "Ed25519".

Ed25519 only: RFC 8037 also names Ed448, X25519 and X448, which are refused (one curve, one
algorithm, as the key, not the token, chooses the algorithm). Public and private keys are 32
octets (RFC 8032 section 5.1.5); a private `d` must give the public `x`. python-jose 3.5.0
lacks EdDSA, so `Ed25519Key` signs and verifies on `cryptography` directly, with the same two
methods as python-jose's key objects.
"""

from __future__ import annotations

from collections.abc import Mapping

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed448, ed25519

from sidecar import b64url
from sidecar.errors import KeyMaterialError
from sidecar.jwa import Algorithm
from sidecar.keys.keytype import BuiltKey, jwk_bytes, thumbprint

__all__ = ["OKP", "Ed25519Key", "OkpKeyType"]

OkpKey = ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey
_KEY_BYTES = 32  # RFC 8032 section 5.1.5: public and private keys are 32 octets
_SIGNATURE_BYTES = 64
_RAW = serialization.Encoding.Raw


class Ed25519Key:
    """An Ed25519 key (RFC 8032 section 5.1); signs only when built from a private key."""

    __slots__ = ("_key",)

    def __init__(self, key: OkpKey) -> None:
        self._key = key

    def sign(self, msg: bytes) -> bytes:
        if not isinstance(self._key, ed25519.Ed25519PrivateKey):
            raise TypeError("a public key cannot sign")
        return self._key.sign(msg)

    def verify(self, msg: bytes, sig: bytes) -> bool:
        if len(sig) != _SIGNATURE_BYTES:
            return False
        key = self._key
        public = key.public_key() if isinstance(key, ed25519.Ed25519PrivateKey) else key
        try:
            public.verify(sig, msg)
        except InvalidSignature:
            return False
        return True


def _x(key: OkpKey) -> str:
    public = key.public_key() if isinstance(key, ed25519.Ed25519PrivateKey) else key
    return b64url.encode_text(public.public_bytes(_RAW, serialization.PublicFormat.Raw))


class OkpKeyType:
    kty = "OKP"
    noun = "an Ed25519 key"
    private_members = frozenset({"d"})  # RFC 8037 section 2

    def owns(self, key: object) -> bool:
        # Ed448 is claimed so that it is refused by name, not as "unknown key".
        return isinstance(
            key,
            ed25519.Ed25519PrivateKey
            | ed25519.Ed25519PublicKey
            | ed448.Ed448PrivateKey
            | ed448.Ed448PublicKey,
        )

    def pem_alg(self, key: object) -> str | None:
        return (
            "EdDSA"
            if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey)
            else None
        )

    def build(self, key: object, alg: Algorithm, who: str) -> BuiltKey:
        if isinstance(key, ed448.Ed448PrivateKey | ed448.Ed448PublicKey):
            raise KeyMaterialError(f"{who}: Ed448 is not supported; use an Ed25519 key")
        if not isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
            raise KeyMaterialError(f"{who}: {alg.name} needs an Ed25519 key")
        public = key.public_key() if isinstance(key, ed25519.Ed25519PrivateKey) else key
        # RFC 8037 section 2: crv and x; the members of its RFC 7638 thumbprint (section A.3).
        members = {"crv": "Ed25519", "kty": "OKP", "x": _x(key)}
        private = isinstance(key, ed25519.Ed25519PrivateKey)
        signer = Ed25519Key(key) if private else None
        return BuiltKey(Ed25519Key(public), signer, thumbprint(members), members)

    def from_jwk(self, jwk: Mapping[str, object], who: str, private: bool) -> OkpKey:
        crv = jwk.get("crv")
        if crv != "Ed25519":  # RFC 8037 also names Ed448, X25519, X448: not signature keys we use
            raise KeyMaterialError(f"{who}: OKP curve {crv!r} is not supported (only Ed25519)")
        x = jwk_bytes(jwk, "x", who)
        if len(x) != _KEY_BYTES:
            raise KeyMaterialError(f"{who}: member 'x' must be {_KEY_BYTES} octets long")
        try:
            public = ed25519.Ed25519PublicKey.from_public_bytes(x)
            if not private:
                return public
            d = jwk_bytes(jwk, "d", who)
            if len(d) != _KEY_BYTES:
                raise KeyMaterialError(f"{who}: member 'd' must be {_KEY_BYTES} octets long")
            key = ed25519.Ed25519PrivateKey.from_private_bytes(d)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise KeyMaterialError(f"{who}: OKP key is not a valid Ed25519 key") from exc
        if key.public_key() != public:
            raise KeyMaterialError(f"{who}: OKP private key 'd' does not match 'x'")
        return key

    def generate(self, alg: Algorithm) -> ed25519.Ed25519PrivateKey:
        return ed25519.Ed25519PrivateKey.generate()

    def private_jwk(self, key: object, alg: Algorithm) -> dict[str, str]:
        """RFC 8037 section 2: crv, x and d."""
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise KeyMaterialError(f"{alg.name} needs an Ed25519 private key")
        raw = key.private_bytes(_RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())
        return {"kty": "OKP", "crv": "Ed25519", "x": _x(key), "d": b64url.encode_text(raw)}


OKP = OkpKeyType()
