"""Fresh keys for `authsidecar keys generate` and the first-run development key.

What is generated for each algorithm is the registry's (sidecar/jwa.py `generate_bits`,
keys/*_key.py `generate`): RSA sizes grow with the hash (2048 for RS256/PS256, 3072 for
RS384/PS384, 4096 for RS512/PS512; NIST SP 800-57 part 1, table 2), EC keys use the curve
of their algorithm, EdDSA / Ed25519 keys are Ed25519 (RFC 8037, RFC 9864); HMAC secrets
are exactly the hash length (RFC 7518 section 3.2), drawn from `secrets`.

The private JWK is returned so the caller can write it; it is the only place private members
appear, and `write_key_file` is the only place they touch the disk (0600, atomically).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sidecar import b64url
from sidecar.errors import KeyMaterialError
from sidecar.jwa import ALGORITHMS
from sidecar.keys import algorithms
from sidecar.keys.keytype import PrivateKey
from sidecar.keys.material import KeyMaterial, build_key

__all__ = ["RSA_BITS", "PrivateKey", "generate_key", "private_jwk", "write_key_file"]

# What `generate_key` makes for each RSA algorithm (the table's `generate_bits`).
RSA_BITS = {name: alg.generate_bits for name, alg in ALGORITHMS.items() if alg.kty == "RSA"}


def generate_key(alg: str, kid: str | None = None) -> tuple[KeyMaterial, dict[str, Any]]:
    """A new signing key for `alg` and its private JWK.

    `kid` defaults to the RFC 7638 thumbprint for RSA/EC/OKP (stable, derived from the key)
    and to a random 128-bit value for HMAC (a thumbprint of a secret would be a hash of it).
    """
    if alg not in ALGORITHMS:
        raise KeyMaterialError(f"cannot generate a key for algorithm {alg!r}")
    key = algorithms.generate(alg)
    if isinstance(key, bytes):
        kid = kid if kid is not None else b64url.encode_text(secrets.token_bytes(16))
        return build_key(key, alg, kid), private_jwk(key, alg, kid)
    probe = build_key(key, alg, kid if kid is not None else "generated")
    kid = kid if kid is not None else probe.thumbprint
    material = build_key(key, alg, kid) if kid != probe.kid else probe
    return material, private_jwk(key, alg, kid)


def private_jwk(key: PrivateKey | bytes, alg: str, kid: str) -> dict[str, Any]:
    """The private JWK of `key` for `alg`: the key type's private members (RFC 7518 section
    6.3.2 / 6.2.2 / 6.4.1, RFC 8037 section 2) after kid, alg and use."""
    members = algorithms.private_members(key, alg)
    return {"kty": members.pop("kty"), "kid": kid, "alg": alg, "use": "sig", **members}


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
