"""Strict compact JWS (RFC 7515 section 7.1): the only parser an unauthenticated token meets.

python-jose 3.5.0 parses tokens leniently (../shared/SECURITY.md), so the sidecar owns the
token format; signatures are computed and checked by `KeyMaterial`'s pre-built key objects
(keys/algorithms.py). `parse_compact` is the first step of every verification
(tokens/verifier.py) and makes the key-free checks of SECURITY.md in order, each failure
with one reason code:

1. size cap, before any other work                                   TOKEN_TOO_LARGE
2. exactly three non-empty segments of [A-Za-z0-9_-], each canonical
   base64url (sidecar/b64url.py: one token, one spelling)            TOKEN_MALFORMED
3. header: strict UTF-8 JSON (sidecar/strict_json.py; bounded size),
   an object with members from {alg, kid, typ} only, `typ` a string  TOKEN_MALFORMED
4. `alg` in the algorithm table, sidecar/jwa.py (never "none",
   RFC 8725 section 2.1)                                             ALGORITHM_NOT_ALLOWED
5. `kid` a string (trying every key is what RFC 8725 section 3.1
   warns of)                                                         KEY_UNKNOWN

The payload stays bytes: it is parsed only after the signature is checked (the verifier's
later steps), except to read `iss` when external issuers are configured. Everything that
goes wrong here, Python exceptions included, becomes `MalformedTokenError` at one boundary,
with a generic message: no exception text, token text or key material.

Issuing (the compact serialisation of what we sign) is tokens/signing.py's.
`decode_jws` and `verify_compact` chain the same steps with a plain key lookup (kid named
key, its algorithm, the signature, then the claim set): for Revoke, tests and conformance
vectors, which need no routing, caching or claim rules.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, ParamSpec, Protocol, TypeVar

from sidecar.b64url import decode as _b64decode
from sidecar.errors import (
    BadSignatureError,
    MalformedTokenError,
    TokenError,
    TokenTooLargeError,
    UnknownKeyError,
    UnsupportedAlgorithmError,
)
from sidecar.jwa import HEADER_NAMES
from sidecar.keys.material import KeyMaterial
from sidecar.strict_json import MAX_JSON_DEPTH, parse_claims, parse_json

__all__ = [
    "DEFAULT_MAX_TOKEN_BYTES",
    "MAX_HEADER_BYTES",
    "MAX_JSON_DEPTH",
    "HeaderLookup",
    "KeyLookup",
    "ParsedJws",
    "VerifiedCompact",
    "VerifiedJws",
    "decode_jws",
    "parse_compact",
    "peek",
    "verify_compact",
]

_P = ParamSpec("_P")
_T = TypeVar("_T")

DEFAULT_MAX_TOKEN_BYTES = 8192
# Our headers are ~60 bytes; anything near this limit is hostile. Bounding the header before
# parsing it means an unauthenticated sender cannot make us parse much.
MAX_HEADER_BYTES = 1024

# Members a header may carry. Everything else is refused rather than ignored: `crit` (RFC 7515
# section 4.1.11: unknown critical members must be refused), `b64` (RFC 7797 changes what is
# signed), `zip` (JWE only), `jku`/`x5u` (would make us fetch keys named by the attacker),
# `jwk`/`x5c` (an attacker-supplied key, RFC 8725 section 3.10), and `cty`: its only use in a
# JWT is "JWT" for a nested token (RFC 7519 section 5.2), and we never accept nested JWTs.
_HEADER_MEMBERS = frozenset({"alg", "kid", "typ"})

# Three non-empty segments from the base64url alphabet only (no padding, no '+', '/', spaces).
# The classes exclude '.', so matching is linear.
_COMPACT = re.compile(rb"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)")


class KeyLookup(Protocol):
    """Exact lookup by `kid` (a `KeyRing`); None when no loaded key has that id."""

    def get(self, kid: str) -> KeyMaterial | None: ...


class HeaderLookup(Protocol):
    """Headers already verified, by their exact base64url segment (tokens/cache.py)."""

    def get(self, segment: bytes) -> Mapping[str, Any] | None: ...


class ParsedJws(NamedTuple):
    """Steps 1-5 passed: nothing here is authenticated yet.

    `header` is a fresh `dict` when this parse built it, the shared read-only view when it
    came from a `HeaderLookup` (the same bytes passed these very checks before). A tuple,
    not a frozen dataclass: built once per token on the hot path, ~1 µs cheaper.
    """

    header: Mapping[str, Any]
    header_segment: bytes
    signing_input: bytes
    payload: bytes
    signature: bytes
    alg: str
    kid: str


@dataclass(frozen=True, slots=True)
class VerifiedCompact:
    """A signature-verified JWS whose payload is still bytes (JWT or not)."""

    header: Mapping[str, Any]
    payload: bytes
    key: KeyMaterial


@dataclass(frozen=True, slots=True)
class VerifiedJws:
    """A signature-verified JWS whose payload is a JSON object; claims are not yet checked."""

    header: Mapping[str, Any]
    claims: dict[str, Any]
    key: KeyMaterial


def _error_boundary(function: Callable[_P, _T]) -> Callable[_P, _T]:
    """The single error boundary (SECURITY.md check 7): a `TokenError` passes; any other
    exception (TypeError, ValueError, RecursionError, UnicodeError, library errors...) means
    hostile input and becomes `MalformedTokenError`, without its text or its chain."""

    @functools.wraps(function)
    def guarded(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return function(*args, **kwargs)
        except TokenError:
            raise
        except Exception:  # noqa: BLE001 - whatever broke, the token is "malformed"
            raise MalformedTokenError from None

    return guarded


def parse_compact(
    token: str | bytes, *, max_bytes: int, known_headers: HeaderLookup | None = None
) -> ParsedJws:
    """Steps 1-5 above; no key, no signature, the payload left unparsed.

    Every segment is decoded (step 2) before the header is looked at (steps 3-5), from
    `known_headers` or not, so a token failing both gets step 2's reason either way; and
    a known header is one whose bytes passed steps 3-5 before, so reading it skips nothing.
    Raises only `TokenError` subclasses (the boundary of `_error_boundary`, written out:
    this is the hot path, and forwarding keyword arguments through a wrapper costs).
    """
    try:
        return _parse_compact(token, max_bytes, known_headers)
    except TokenError:
        raise
    except Exception:  # noqa: BLE001 - whatever broke, the token is "malformed"
        raise MalformedTokenError from None


def _parse_compact(
    token: str | bytes, max_bytes: int, known_headers: HeaderLookup | None
) -> ParsedJws:
    if len(token) > max_bytes:
        raise TokenTooLargeError
    data = token.encode("utf-8") if isinstance(token, str) else bytes(token)
    if len(data) > max_bytes:
        raise TokenTooLargeError
    match = _COMPACT.fullmatch(data)
    if match is None:
        raise MalformedTokenError
    header_segment, payload_segment, signature_segment = match.group(1, 2, 3)
    known = known_headers.get(header_segment) if known_headers is not None else None
    header_raw = _b64decode(header_segment) if known is None else b""
    payload = _b64decode(payload_segment)
    signature = _b64decode(signature_segment)
    signing_input = data[: match.end(2)]
    if known is not None:
        return ParsedJws(
            known, header_segment, signing_input, payload, signature, known["alg"], known["kid"]
        )
    if len(header_raw) > MAX_HEADER_BYTES:
        raise MalformedTokenError
    header = parse_json(header_raw)
    if type(header) is not dict or not header.keys() <= _HEADER_MEMBERS:
        raise MalformedTokenError
    if "typ" in header and type(header["typ"]) is not str:
        raise MalformedTokenError
    alg = header.get("alg")
    if type(alg) is not str or alg not in HEADER_NAMES:
        raise UnsupportedAlgorithmError  # includes "none" and every alg we do not implement
    kid = header.get("kid")
    if type(kid) is not str:
        raise UnknownKeyError
    return ParsedJws(header, header_segment, signing_input, payload, signature, alg, kid)


def checked_key(parsed: ParsedJws, keys: KeyLookup) -> KeyMaterial:
    """The key `kid` names in `keys` (KEY_UNKNOWN) whose algorithm is the header's: the key,
    not the token, chooses the algorithm (RFC 8725 section 3.1; ALGORITHM_NOT_ALLOWED). An
    RSA key never verifies an HS256 MAC (CVE-2024-33663 and its older cousins). An Ed25519
    key answers to "EdDSA" and to its RFC 9864 name "Ed25519" (`KeyMaterial.header_algs`):
    the same computation over the same key, so no confusion is possible."""
    key = keys.get(parsed.kid)
    if key is None:
        raise UnknownKeyError
    if parsed.alg not in key.header_algs:
        raise UnsupportedAlgorithmError
    return key


def _verified(token: str | bytes, keys: KeyLookup, max_bytes: int) -> tuple[ParsedJws, KeyMaterial]:
    parsed = parse_compact(token, max_bytes=max_bytes)
    key = checked_key(parsed, keys)
    if not key.verify(parsed.signing_input, parsed.signature):
        raise BadSignatureError
    return parsed, key


@_error_boundary
def verify_compact(
    token: str | bytes, keys: KeyLookup, *, max_bytes: int = DEFAULT_MAX_TOKEN_BYTES
) -> VerifiedCompact:
    """Parse, key, signature; the payload is returned as bytes, whatever it is (JWS
    conformance vectors)."""
    parsed, key = _verified(token, keys, max_bytes)
    return VerifiedCompact(parsed.header, parsed.payload, key)


@_error_boundary
def decode_jws(
    token: str | bytes, keys: KeyLookup, *, max_bytes: int = DEFAULT_MAX_TOKEN_BYTES
) -> VerifiedJws:
    """Verify a compact JWS whose payload is a claim set (strict JSON object, I-JSON numbers).

    Raises only `TokenError` subclasses. The payload is parsed after the signature is
    checked, so an unauthenticated sender can make us parse only a bounded header.
    """
    parsed, key = _verified(token, keys, max_bytes)
    return VerifiedJws(parsed.header, parse_claims(parsed.payload), key)


@_error_boundary
def peek(
    token: str | bytes, *, max_bytes: int = DEFAULT_MAX_TOKEN_BYTES
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims parsed as strictly as `decode_jws` does, WITHOUT any signature check.

    For the operator CLI (`token inspect`) and the Revoke audit line only: the result proves
    nothing about who made the token, so it must never feed an authorisation decision.
    """
    parsed = parse_compact(token, max_bytes=max_bytes)
    return dict(parsed.header), parse_claims(parsed.payload)
