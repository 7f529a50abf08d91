"""Key material: loading, hygiene, lookup by kid, and the public JWKS."""

from __future__ import annotations

from sidecar.keys.generate import generate_key, write_key_file
from sidecar.keys.loader import load_key_file, parse_jwk, parse_jwks
from sidecar.keys.material import KeyMaterial
from sidecar.keys.ring import KeyRing

__all__ = [
    "KeyMaterial",
    "KeyRing",
    "generate_key",
    "load_key_file",
    "parse_jwk",
    "parse_jwks",
    "write_key_file",
]
