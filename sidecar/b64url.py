"""Unpadded base64url (RFC 7515 section 2, RFC 4648 section 5): the one codec of the sidecar.

Token segments (tokens/jws.py), JWK members (keys/), thumbprints and generated kids all use
these functions, so there is one definition of "canonical": exactly the alphabet
[A-Za-z0-9_-], no padding, a possible length, and zero spare bits in the last character. A
value therefore has exactly one spelling, and a token or key cannot be re-spelled past a
cache, a comparison or a signature (python-jose accepts all of these, ../shared/SECURITY.md).

Decoding failures raise `ValueError` (`binascii.Error` is one); callers turn it into their
own error (`MalformedTokenError` at the JWS boundary, `KeyMaterialError` naming the member).
"""

from __future__ import annotations

import base64
import binascii
import re

__all__ = ["decode", "decode_text", "encode", "encode_text", "encode_uint"]

_ALPHABET = re.compile(r"[A-Za-z0-9_-]*")
_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
_PADDING = (b"", b"", b"==", b"=")
# Allowed last characters by length mod 4: none for 1 (impossible length); for 2 (1 byte + 4
# spare bits) and 3 (2 bytes + 2 spare bits) those whose spare bits are zero.
_CANONICAL_TAILS: tuple[frozenset[int] | None, ...] = (
    None,
    frozenset(),
    frozenset(b"AQgw"),
    frozenset(b"AEIMQUYcgkosw048"),
)


def decode(segment: bytes) -> bytes:
    """Canonical base64url of `segment`, which the caller already matched to the alphabet
    (the JWS parser's regex does, so this is the hot path: three calls per token).

    Canonical iff the length is possible and the last character's spare bits are zero:
    re-encoding's check, three times faster.
    """
    rest = len(segment) % 4
    tails = _CANONICAL_TAILS[rest]
    if tails is not None and segment[-1] not in tails:
        raise ValueError("non-canonical base64url")
    return binascii.a2b_base64(segment.translate(_TO_STANDARD) + _PADDING[rest], strict_mode=True)


def decode_text(value: str) -> bytes:
    """`decode` for a string not yet checked against the alphabet (a JWK member). The
    `ValueError` says which rule failed, in words that never quote the value."""
    if not _ALPHABET.fullmatch(value) or len(value) % 4 == 1:
        raise ValueError("not unpadded base64url")
    try:
        return decode(value.encode("ascii"))
    except binascii.Error:
        raise ValueError("not base64url") from None


def encode(raw: bytes) -> bytes:
    return base64.urlsafe_b64encode(raw).rstrip(b"=")


def encode_text(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def encode_uint(value: int, size: int | None = None) -> str:
    """An unsigned integer, big-endian: in `size` octets (EC coordinates, RFC 7518 section
    6.2.1.2), or in the fewest, never with leading zero octets (RSA members, 6.3.1.1)."""
    length = size if size is not None else max(1, (value.bit_length() + 7) // 8)
    return encode_text(value.to_bytes(length, "big"))
