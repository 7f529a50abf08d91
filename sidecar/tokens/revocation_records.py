"""How the revocation set (revocation_set.py) writes one revocation down: a record.

A record is `kind issuer-code key-utf8`: the kind one byte, the issuer interned to a 3-byte
code (a deployment has a handful of issuers, each repeated on every entry), the key (jti or
family id) in UTF-8 (`surrogatepass`, so any Python string round-trips). Records are stored
as `0xFF record 0xFF record ... 0xFF`; 0xFF never occurs in UTF-8 and every code byte is below
0xF0, so 0xFF marks record boundaries only: a search for `0xFF record 0xFF` matches exactly
that record, never a part of another. No digest, so no collision and no false positive, and a
record can be decoded back to the triple (to write it back to a store that lost it, issue 13).
"""

from __future__ import annotations

from collections.abc import Sequence

from sidecar.store.base import RevocationKind

SEP = b"\xff"
KIND_CODES: dict[str, bytes] = {"jti": b"\x01", "family": b"\x02"}
KIND_NAMES: dict[int, RevocationKind] = {1: "jti", 2: "family"}
_BASE = 0xF0
_MAX_ISSUERS = _BASE**3


class IssuerCodes:
    """Issuers interned to 3-byte codes, in order of first use; see the module docstring."""

    def __init__(self, issuers: Sequence[str] = ()) -> None:
        self.codes: dict[str, bytes] = {}
        self.names: list[str] = []
        for issuer in issuers:
            self.intern(issuer)

    def intern(self, issuer: str) -> bytes:
        """The issuer's code, given it now if it has none."""
        code = self.codes.get(issuer)
        if code is not None:
            return code
        n = len(self.names)
        if n >= _MAX_ISSUERS:
            raise OverflowError("too many distinct issuers in the revocation set")
        code = bytes((n // _BASE // _BASE, n // _BASE % _BASE, n % _BASE))
        self.codes[issuer] = code
        self.names.append(issuer)
        return code

    def body(self, kind: str, issuer: str, key: str) -> bytes | None:
        """The record of a triple; None when its issuer was never interned (no record can
        name it: lookups never intern)."""
        code = self.codes.get(issuer)
        if code is None:
            return None
        return KIND_CODES[kind] + code + key.encode("utf-8", "surrogatepass")

    def starts(self) -> list[bytes]:
        """`0xFF kind code` for every kind and interned issuer: how a valid record begins."""
        return [SEP + kind + code for kind in KIND_CODES.values() for code in self.codes.values()]

    def decode(self, body: bytes) -> tuple[RevocationKind, str, str]:
        code = body[1:4]
        index = (code[0] * _BASE + code[1]) * _BASE + code[2]
        return KIND_NAMES[body[0]], self.names[index], body[4:].decode("utf-8", "surrogatepass")
