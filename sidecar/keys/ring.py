"""The set of keys the sidecar trusts: lookup by kid, the signing key, the public JWKS.

A ring is immutable; a reload builds a new one and swaps it in whole, so a request never
sees half a rotation. Invariants checked at construction (../shared/SECURITY.md, item 5):

* kids are unique: a token's `kid` picks exactly one key, never "try them all";
* `oct` keys never share a ring with RSA/EC keys: a verifier that holds both can be fooled
  into MACing with a public key (the RS256 -> HS256 confusion, CVE-2024-33663);
* at most one signing key, chosen explicitly when several could sign.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from sidecar.errors import KeyMaterialError
from sidecar.keys.material import KeyMaterial

__all__ = ["KeyRing"]


class KeyRing:
    """Keys by kid, plus the one key used to sign (None for a verification-only ring)."""

    __slots__ = ("_by_kid", "_keys", "_signing", "_algorithms", "_version")

    def __init__(self, keys: Sequence[KeyMaterial], signing_kid: str | None = None) -> None:
        by_kid: dict[str, KeyMaterial] = {}
        for key in keys:
            if key.kid in by_kid:
                raise KeyMaterialError(f"key {key.kid!r}: duplicate kid in key ring")
            by_kid[key.kid] = key
        if len({key.symmetric for key in keys}) > 1:
            raise KeyMaterialError(
                "a key ring cannot mix HMAC (oct) keys with RSA/EC keys; use separate rings"
            )
        self._by_kid = by_kid
        self._keys = tuple(keys)
        self._signing = self._choose_signing_key(signing_kid)
        self._algorithms = frozenset(key.alg for key in keys)
        self._version = self._compute_version()

    def _choose_signing_key(self, signing_kid: str | None) -> KeyMaterial | None:
        if signing_kid is not None:
            key = self._by_kid.get(signing_kid)
            if key is None:
                raise KeyMaterialError(f"signing key {signing_kid!r} is not in the key ring")
            if not key.can_sign:
                raise KeyMaterialError(f"signing key {signing_kid!r} is verification-only")
            return key
        signers = [key for key in self._keys if key.can_sign]
        if len(signers) > 1:
            kids = ", ".join(repr(key.kid) for key in signers)
            raise KeyMaterialError(f"several keys can sign ({kids}); choose one as signing_kid")
        return signers[0] if signers else None

    def _compute_version(self) -> str:
        # Sorted, so the version names the set, not the order of the files it came from.
        # The thumbprint makes a changed key under an old kid a new version.
        entries = sorted((key.kid, key.alg, key.thumbprint) for key in self._keys)
        canonical = json.dumps(entries, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]

    def get(self, kid: str) -> KeyMaterial | None:
        """The key named `kid`, or None. On the verify hot path: one dict lookup."""
        return self._by_kid.get(kid)

    def __contains__(self, kid: object) -> bool:
        return kid in self._by_kid

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def signing_key(self) -> KeyMaterial | None:
        return self._signing

    @property
    def keys(self) -> tuple[KeyMaterial, ...]:
        return self._keys

    @property
    def algorithms(self) -> frozenset[str]:
        return self._algorithms

    @property
    def version(self) -> str:
        """16 hex digits naming the set of (kid, alg, thumbprint): equal sets, equal versions."""
        return self._version

    def jwks(self) -> dict[str, Any]:
        """The public JWK Set (RFC 7517 section 5): public members with kid, alg, use "sig".

        HMAC secrets never appear; neither do private members (`public_jwk` holds none).
        """
        published = [jwk for key in self._keys if (jwk := key.public_jwk()) is not None]
        return {"keys": published}

    def __repr__(self) -> str:
        signing = self._signing.kid if self._signing is not None else None
        return (
            f"KeyRing(version={self._version!r}, kids={list(self._by_kid)!r}, signing={signing!r})"
        )
