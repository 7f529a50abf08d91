"""Fresh keys for `authsidecar keys generate` and the first-run development key.

RSA sizes grow with the hash (2048 for RS256/PS256, 3072 for RS384/PS384, 4096 for
RS512/PS512) so the key is never the weakest link of the algorithm it is named for (NIST
SP 800-57 part 1, table 2: 3072 bits ~ 128-bit security). EC keys use the curve of their
algorithm, EdDSA / Ed25519 keys are Ed25519 (RFC 8037, RFC 9864); HMAC secrets are exactly
the hash length (RFC 7518 section 3.2), drawn from `secrets`.

The private JWK is returned so the caller can write it; it is the only place private members
appear, and `write_key_file` is the only place they touch the disk (0600, atomically).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from sidecar.errors import KeyMaterialError
from sidecar.keys.algorithms import PSS_ALGS
from sidecar.keys.material import (
    EC_ALGS,
    HMAC_ALGS,
    OKP_ALGS,
    RSA_ALGS,
    SUPPORTED_ALGS,
    KeyMaterial,
    asymmetric_key,
    hmac_key,
)

__all__ = ["RSA_BITS", "generate_key", "private_jwk", "write_key_file"]

RSA_BITS = {
    "RS256": 2048,
    "RS384": 3072,
    "RS512": 4096,
    "PS256": 2048,
    "PS384": 3072,
    "PS512": 4096,
}
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
_EC_CURVE: dict[str, ec.EllipticCurve] = {
    "ES256": ec.SECP256R1(),
    "ES384": ec.SECP384R1(),
    "ES512": ec.SECP521R1(),
}
_HMAC_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _uint(value: int, size: int | None = None) -> str:
    length = size if size is not None else max(1, (value.bit_length() + 7) // 8)
    return _b64(value.to_bytes(length, "big"))


def generate_key(alg: str, kid: str | None = None) -> tuple[KeyMaterial, dict[str, Any]]:
    """A new signing key for `alg` and its private JWK.

    `kid` defaults to the RFC 7638 thumbprint for RSA/EC (stable, derived from the key) and
    to a random 128-bit value for HMAC (a thumbprint of a secret would be a hash of it).
    """
    if alg not in SUPPORTED_ALGS:
        raise KeyMaterialError(f"cannot generate a key for algorithm {alg!r}")
    if alg in HMAC_ALGS:
        secret = secrets.token_bytes(_HMAC_BYTES[alg])
        kid = kid if kid is not None else _b64(secrets.token_bytes(16))
        return hmac_key(secret, alg, kid), {
            "kty": "oct",
            "kid": kid,
            "alg": alg,
            "use": "sig",
            "k": _b64(secret),
        }
    key: PrivateKey
    if alg in RSA_ALGS | PSS_ALGS:
        key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS[alg])
    elif alg in OKP_ALGS:
        key = ed25519.Ed25519PrivateKey.generate()
    else:
        key = ec.generate_private_key(_EC_CURVE[alg])
    probe = asymmetric_key(key, alg, kid if kid is not None else "generated")
    kid = kid if kid is not None else probe.thumbprint
    material = asymmetric_key(key, alg, kid) if kid != probe.kid else probe
    return material, private_jwk(key, alg, kid)


def private_jwk(key: PrivateKey, alg: str, kid: str) -> dict[str, Any]:
    """The private JWK of an RSA or EC key (RFC 7518 section 6.3.2 / 6.2.2 members) or of
    an Ed25519 key (RFC 8037 section 2: crv, x, d)."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raw = serialization.Encoding.Raw
        x = key.public_key().public_bytes(raw, serialization.PublicFormat.Raw)
        d = key.private_bytes(raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
        return {
            "kty": "OKP",
            "kid": kid,
            "alg": alg,
            "use": "sig",
            "crv": "Ed25519",
            "x": _b64(x),
            "d": _b64(d),
        }
    if isinstance(key, rsa.RSAPrivateKey):
        priv = key.private_numbers()
        pub = priv.public_numbers
        return {
            "kty": "RSA",
            "kid": kid,
            "alg": alg,
            "use": "sig",
            "n": _uint(pub.n),
            "e": _uint(pub.e),
            "d": _uint(priv.d),
            "p": _uint(priv.p),
            "q": _uint(priv.q),
            "dp": _uint(priv.dmp1),
            "dq": _uint(priv.dmq1),
            "qi": _uint(priv.iqmp),
        }
    if alg not in EC_ALGS:
        raise KeyMaterialError(f"key {kid!r}: an EC key cannot be used with {alg!r}")
    size = (key.curve.key_size + 7) // 8
    ec_priv = key.private_numbers()
    crv = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}[key.curve.name]
    return {
        "kty": "EC",
        "kid": kid,
        "alg": alg,
        "use": "sig",
        "crv": crv,
        "x": _uint(ec_priv.public_numbers.x, size),
        "y": _uint(ec_priv.public_numbers.y, size),
        "d": _uint(ec_priv.private_value, size),
    }


def write_key_file(path: Path, jwk: Mapping[str, Any]) -> None:
    """Write `jwk` as JSON, readable by the owner only, replacing `path` atomically.

    The temporary file is created 0600 in the target directory (same file system, so
    `os.replace` is atomic) and fsynced first: a crash leaves the old file or the new one,
    never a truncated key, and the secret is never world-readable, even briefly.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    data = (json.dumps(dict(jwk), indent=2, sort_keys=True) + "\n").encode("utf-8")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
