"""PS256/384/512 and EdDSA, which python-jose 3.5.0 lacks, built directly on `cryptography`.

They expose the two methods `KeyMaterial` calls on python-jose's key objects, `sign(msg)` and
`verify(msg, sig)`, so the JWS layer cannot tell them apart and needs no change. They are not
registered with `jose.jwk.register_key`: that registry is global and would let python-jose's
own lenient entry points (`jws.verify` with a JWK dict) reach these keys; nothing here needs it.

* RSASSA-PSS (RFC 7518 section 3.5): MGF1 with the same hash, salt exactly the hash length.
  The verifier does not accept other salt lengths (`PSS.AUTO` would), so one message has one
  family of signatures, and Wycheproof's "SaltLenChanged" forgeries are refused.
* EdDSA (RFC 8037 section 3.1): Ed25519 only. Ed448 keys are refused at load time: one curve,
  one algorithm, as the key (not the token) chooses the algorithm.
* HS256/384/512 *verification* (RFC 7518 section 3.2): python-jose has it, but its
  `CryptographyHMACKey.verify` builds `hmac.HMAC(key, hash, backend=default_backend())` on
  every call (issue 7: ~2.5 µs of a ~20 µs Verify). `HmacKey` keys one context at load time
  and copies it per call: same library (cryptography over OpenSSL), same MAC, and the same
  constant-time comparison (`HMAC.verify`). HMAC secrets still sign through python-jose.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

__all__ = ["PSS_ALGS", "Ed25519Key", "HmacKey", "PssKey"]

_HASHES: dict[str, type[hashes.SHA256 | hashes.SHA384 | hashes.SHA512]] = {
    "PS256": hashes.SHA256,
    "PS384": hashes.SHA384,
    "PS512": hashes.SHA512,
}
PSS_ALGS = frozenset(_HASHES)
ED25519_SIGNATURE_BYTES = 64
_HMAC_HASHES: dict[str, type[hashes.SHA256 | hashes.SHA384 | hashes.SHA512]] = {
    "HS256": hashes.SHA256,
    "HS384": hashes.SHA384,
    "HS512": hashes.SHA512,
}


class PssKey:
    """An RSA key used with RSASSA-PSS; signs only when built from a private key."""

    __slots__ = ("_key", "_hash", "_padding")

    def __init__(self, key: rsa.RSAPrivateKey | rsa.RSAPublicKey, alg: str) -> None:
        self._key = key
        self._hash = _HASHES[alg]()
        # RFC 7518 section 3.5: "The size of the salt value is the same size as the hash
        # function output."
        self._padding = padding.PSS(
            mgf=padding.MGF1(_HASHES[alg]()), salt_length=self._hash.digest_size
        )

    def sign(self, msg: bytes) -> bytes:
        if not isinstance(self._key, rsa.RSAPrivateKey):
            raise TypeError("a public key cannot sign")
        return self._key.sign(msg, self._padding, self._hash)

    def verify(self, msg: bytes, sig: bytes) -> bool:
        public = self._key.public_key() if isinstance(self._key, rsa.RSAPrivateKey) else self._key
        # A signature is exactly the modulus length (RFC 8017 section 8.1.2 step 1); leading
        # zero octets added or removed are a different byte string, hence refused.
        if len(sig) != (public.key_size + 7) // 8:
            return False
        try:
            public.verify(sig, msg, self._padding, self._hash)
        except InvalidSignature:
            return False
        return True


class Ed25519Key:
    """An Ed25519 key (RFC 8032 section 5.1); signs only when built from a private key."""

    __slots__ = ("_key",)

    def __init__(self, key: ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey) -> None:
        self._key = key

    def sign(self, msg: bytes) -> bytes:
        if not isinstance(self._key, ed25519.Ed25519PrivateKey):
            raise TypeError("a public key cannot sign")
        return self._key.sign(msg)

    def verify(self, msg: bytes, sig: bytes) -> bool:
        if len(sig) != ED25519_SIGNATURE_BYTES:
            return False
        public = (
            self._key.public_key()
            if isinstance(self._key, ed25519.Ed25519PrivateKey)
            else self._key
        )
        try:
            public.verify(sig, msg)
        except InvalidSignature:
            return False
        return True


class HmacKey:
    """An HMAC secret (RFC 2104) keyed once; `verify` is the hot path of every HS* token.

    The keyed context is never updated or finalised itself: each call works on a copy
    (`HMAC.copy`, which duplicates the OpenSSL context, so the key is not processed again),
    and `HMAC.verify` compares in constant time. A signature of the wrong length is refused
    like a wrong one. The secret's length was checked by `material.hmac_key`.
    """

    __slots__ = ("_keyed",)

    def __init__(self, secret: bytes, alg: str) -> None:
        self._keyed = hmac.HMAC(secret, _HMAC_HASHES[alg]())

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
