"""Hand-built JOSE pieces the token tests share: base64url text and a key lookup by kid."""

from __future__ import annotations

import base64

from sidecar.keys.material import KeyMaterial


def b64url(raw: bytes) -> str:
    """Unpadded base64url (RFC 7515 section 2), as a compact JWS segment is written."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


class KeysByKid:
    """A fake of our own `KeyLookup` protocol: exact lookup by kid, nothing else."""

    def __init__(self, *keys: KeyMaterial) -> None:
        self._keys = {key.kid: key for key in keys}

    def get(self, kid: str) -> KeyMaterial | None:
        return self._keys.get(kid)
