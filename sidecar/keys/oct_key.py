"""HMAC secrets (`kty` "oct", RFC 7518 sections 3.2 and 6.4): HS256, HS384, HS512.

A secret must be at least as long as the hash output (RFC 7518 section 3.2); a shorter one
stops start-up. Secrets sign through python-jose (`CryptographyHMACKey`, which also refuses
PEM-looking secrets, the raw material of HMAC/RSA confusion), and verify through `HmacKey`:
python-jose's `verify` builds `hmac.HMAC(key, hash, backend=default_backend())` on every
call (issue 7: ~2.5 µs of a ~20 µs Verify), while `HmacKey` keys one context at load time
and copies it per call: same library (cryptography over OpenSSL), same MAC, and the same
constant-time comparison (`HMAC.verify`).

A secret is never published: `public_members` is None, and its "thumbprint" is a hash of
the secret under a label of ours, never the secret.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hmac
from jose.backends.cryptography_backend import CryptographyHMACKey

from sidecar import b64url
from sidecar.errors import KeyMaterialError
from sidecar.jwa import Algorithm
from sidecar.keys.keytype import BuiltKey, hash_of, jwk_bytes

__all__ = ["OCT", "HmacKey", "OctKeyType"]


class HmacKey:
    """An HMAC secret (RFC 2104) keyed once; `verify` is the hot path of every HS* token.

    The keyed context is never updated or finalised itself: each call works on a copy
    (`HMAC.copy`, which duplicates the OpenSSL context, so the key is not processed again),
    and `HMAC.verify` compares in constant time. A signature of the wrong length is refused
    like a wrong one.
    """

    __slots__ = ("_keyed",)

    def __init__(self, secret: bytes, alg: Algorithm) -> None:
        self._keyed = hmac.HMAC(secret, hash_of(alg))

    def sign(self, msg: bytes) -> bytes:
        mac = self._keyed.copy()
        mac.update(msg)
        return mac.finalize()

    def verify(self, msg: bytes, sig: bytes) -> bool:
        mac = self._keyed.copy()
        mac.update(msg)
        try:
            mac.verify(sig)
        except InvalidSignature:
            return False
        return True


class OctKeyType:
    """The key object of an "oct" key is the secret's bytes."""

    kty = "oct"
    noun = "an HMAC secret"
    private_members = frozenset({"k"})  # RFC 7518 section 6.4.1

    def owns(self, key: object) -> bool:
        return isinstance(key, bytes)

    def pem_alg(self, key: object) -> str | None:
        return None  # a secret never comes from PEM

    def build(self, key: object, alg: Algorithm, who: str) -> BuiltKey:
        if not isinstance(key, bytes):
            raise KeyMaterialError(f"{who}: {alg.name} needs a shared secret")
        need = alg.min_key_bits // 8
        if len(key) < need:
            raise KeyMaterialError(
                f"{who}: {alg.name} secret is {len(key)} bytes, at least {need} are required"
            )
        try:
            jose_key = CryptographyHMACKey(key, alg.name)
        except Exception as exc:  # noqa: BLE001 - jose refuses PEM-looking secrets, among others
            raise KeyMaterialError(f"{who}: unusable HMAC secret") from exc
        digest = hashlib.sha256(b"authsidecar-hmac-kid:" + key).digest()
        # Verified with the bytes python-jose would MAC with, on a context keyed once (issue 7).
        verifier = HmacKey(jose_key.prepared_key, alg)
        return BuiltKey(verifier, jose_key, b64url.encode_text(digest), None)

    def from_jwk(self, jwk: Mapping[str, object], who: str, private: bool) -> bytes:
        return jwk_bytes(jwk, "k", who)

    def generate(self, alg: Algorithm) -> bytes:
        return secrets.token_bytes(alg.generate_bits // 8)

    def private_jwk(self, key: object, alg: Algorithm) -> dict[str, str]:
        if not isinstance(key, bytes):
            raise KeyMaterialError(f"{alg.name} needs a shared secret")
        return {"kty": "oct", "k": b64url.encode_text(key)}


OCT = OctKeyType()
