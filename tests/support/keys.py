"""Real keys for tests, cached because RSA generation is slow.

Every `(alg, kid)` pair names one key for the whole test session: `make_key("RS256", "a")`
and `write_jwk_file(tmp_path, "RS256", "a")` hold the same key, while different kids get
different keys (so "signed by another key" tests are real). RSA keys are 2048 bits for every
RS*/PS* algorithm: hygiene only requires >= 2048, and bigger sizes only cost test time.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from sidecar.jwa import ALGORITHMS
from sidecar.keys import algorithms
from sidecar.keys.generate import PrivateKey, private_jwk
from sidecar.keys.material import KeyMaterial, build_key

__all__ = ["make_key", "make_private_jwk", "private_key", "rsa_key_of_size", "write_jwk_file"]

TEST_RSA_BITS = 2048


def _default_kid(alg: str) -> str:
    return f"test-{alg.lower()}"


@functools.lru_cache(maxsize=16)
def rsa_key_of_size(bits: int, slot: str = "") -> rsa.RSAPrivateKey:
    """A cached RSA key of `bits` (`slot` tells apart keys of the same size).

    Hygiene tests use it for sizes below the minimum, which `generate_key` never makes.
    """
    del slot  # only part of the cache key
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


@functools.lru_cache(maxsize=128)
def private_key(alg: str, kid: str) -> PrivateKey | bytes:
    """The session's private key (or HMAC secret) for `(alg, kid)`: the registry's fresh
    key, except RSA, which is cached per kid at the minimum size."""
    if ALGORITHMS[alg].kty == "RSA":
        return rsa_key_of_size(TEST_RSA_BITS, kid)
    return algorithms.generate(alg)


def make_key(alg: str, kid: str | None = None) -> KeyMaterial:
    """A signing-capable `KeyMaterial` for `alg`; the same `(alg, kid)` gives the same key."""
    kid = kid if kid is not None else _default_kid(alg)
    return build_key(private_key(alg, kid), alg, kid)


def make_private_jwk(alg: str, kid: str | None = None) -> dict[str, Any]:
    """The private JWK of `make_key(alg, kid)`."""
    kid = kid if kid is not None else _default_kid(alg)
    return private_jwk(private_key(alg, kid), alg, kid)


def write_jwk_file(tmp_path: Path, alg: str, kid: str | None = None) -> Path:
    """Write the private JWK of `make_key(alg, kid)` to `tmp_path/<kid>.jwk.json` (0600)."""
    jwk = make_private_jwk(alg, kid)
    path = tmp_path / f"{jwk['kid']}.jwk.json"
    path.write_text(json.dumps(jwk), encoding="utf-8")
    path.chmod(0o600)
    return path
