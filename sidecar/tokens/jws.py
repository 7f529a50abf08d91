"""Strict compact JWS (RFC 7515 section 7.1): the only parser an unauthenticated token meets.

python-jose 3.5.0 parses tokens leniently (../shared/SECURITY.md), so the sidecar owns the
token format and uses python-jose only through `KeyMaterial`'s pre-built key objects to
compute and check signatures. `verify_compact` makes the checks of SECURITY.md in order, and
each failure has one reason code:

1. size cap, before any other work                                   TOKEN_TOO_LARGE
2. exactly three non-empty segments of [A-Za-z0-9_-], each canonical
   base64url (re-encoding gives the segment back, RFC 7515 section 2;
   one token has exactly one spelling)                               TOKEN_MALFORMED
3. header: strict UTF-8 JSON (no duplicate names, RFC 8725 section
   3.1 / RFC 7515 section 5.2 step 4; no NaN/Infinity; bounded size
   and depth), an object with members from {alg, kid, typ} only      TOKEN_MALFORMED
4. `alg` one of ours (never "none", RFC 8725 section 2.1)             ALGORITHM_NOT_ALLOWED
5. `kid` a string naming a loaded key                                KEY_UNKNOWN
6. `alg` equal to the key's algorithm: the key, not the token,
   chooses the algorithm (RFC 8725 section 3.1)                      ALGORITHM_NOT_ALLOWED
7. signature over the segments as received                           SIGNATURE_INVALID

`decode_jws` then parses the payload as a strict JSON object (RFC 7519 section 7.2 step 10).
Everything else that goes wrong, Python exceptions included, becomes `MalformedTokenError`
at one boundary, with a generic message: no exception text, token text or key material.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ParamSpec, Protocol, TypeVar

from sidecar.errors import (
    BadSignatureError,
    InvalidRequestError,
    MalformedTokenError,
    TokenError,
    TokenTooLargeError,
    UnknownKeyError,
    UnsupportedAlgorithmError,
)
from sidecar.keys.material import SUPPORTED_ALGS, KeyMaterial

__all__ = [
    "DEFAULT_MAX_TOKEN_BYTES",
    "MAX_HEADER_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_VERIFIED_HEADERS",
    "KeyLookup",
    "VerifiedCompact",
    "VerifiedJws",
    "decode_jws",
    "decode_jws_routed",
    "encode_jws",
    "jws_compact",
    "jws_signing_input",
    "peek",
    "verify_compact",
]

_P = ParamSpec("_P")
_T = TypeVar("_T")

DEFAULT_MAX_TOKEN_BYTES = 8192
# Our headers are ~60 bytes; anything near this limit is hostile. Bounding the header before
# parsing it means an unauthenticated sender cannot make us parse much.
MAX_HEADER_BYTES = 1024
# Nesting allowed in header and claims (RFC 8693 `act` chains nest a few levels). The json C
# scanner recurses per level, so an unbounded depth is a RecursionError on a few KiB.
MAX_JSON_DEPTH = 16

# Members a header may carry. Everything else is refused rather than ignored: `crit` (RFC 7515
# section 4.1.11: unknown critical members must be refused), `b64` (RFC 7797 changes what is
# signed), `zip` (JWE only), `jku`/`x5u` (would make us fetch keys named by the attacker),
# `jwk`/`x5c` (an attacker-supplied key, RFC 8725 section 3.10), and `cty`: its only use in a
# JWT is "JWT" for a nested token (RFC 7519 section 5.2), and we never accept nested JWTs.
_HEADER_MEMBERS = frozenset({"alg", "kid", "typ"})

# Three non-empty segments from the base64url alphabet only (no padding, no '+', '/', spaces).
# The classes exclude '.', so matching is linear.
_COMPACT = re.compile(rb"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)")
# A JSON string or a bracket; used only when a document has many brackets, to measure depth.
_JSON_STRUCTURE = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)
# A \u escape of a UTF-16 surrogate: json.loads turns a lone one into a str that cannot be
# encoded as UTF-8 again (RFC 8259 section 8.2), which would fail far away, e.g. in protobuf.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")
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
# Parsed headers by their exact base64url segment (issue 7). All tokens of one key share a
# header, so decoding and strictly parsing it (~2 µs) is paid once per key, not per token.
# The memo only ever holds what steps 2-4 produce from those very bytes (a pure function of
# them), and a header enters only once a token carrying it passed step 7, so unauthenticated
# senders cannot fill it; it is bounded all the same (emptied when full). Entries are
# read-only views, as every caller shares them. Reading it never skips a check that could
# fail: the segment is the one that passed them, and steps 5-7 run on every call.
MAX_VERIFIED_HEADERS = 64
_verified_headers: dict[bytes, Mapping[str, Any]] = {}


class KeyLookup(Protocol):
    """Exact lookup by `kid` (a `KeyRing`); None when no loaded key has that id."""

    def get(self, kid: str) -> KeyMaterial | None: ...


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


class _Refused(ValueError):
    """Internal: a strictness rule failed; the boundary turns it into MalformedTokenError."""


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Python keeps the last duplicate, other parsers the first: refuse rather than guess
    # (RFC 7515 section 5.2 step 4, RFC 8259 section 4).
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _Refused
    return obj


def _refuse_constant(_name: str) -> Any:
    raise _Refused  # NaN, Infinity, -Infinity are not JSON (RFC 8259 section 6)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 overflows to inf
        raise _Refused
    return value


_DECODER = json.JSONDecoder(
    object_pairs_hook=_object_without_duplicates,
    parse_constant=_refuse_constant,
    parse_float=_finite_float,
)
# The same decoder's scanner (C), with the same hooks: `_parse_json`'s fast path. Set by
# JSONDecoder.__init__ (json/decoder.py), but absent from typeshed's stub.
_SCAN_ONCE: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined]


def _check_depth(document: bytes) -> None:
    # Bracket count bounds depth, so the exact (slower) scan runs only for unusual documents.
    if document.count(b"[") + document.count(b"{") <= MAX_JSON_DEPTH:
        return
    depth = 0
    for match in _JSON_STRUCTURE.finditer(document):
        char = match.group()
        if char in (b"[", b"{"):
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise _Refused
        elif char in (b"]", b"}"):
            depth -= 1


def _decode(text: str) -> Any:
    """`_DECODER.decode(text)`, ~0.5 µs cheaper for the usual document (issue 7).

    `JSONDecoder.decode` skips white space, calls `scan_once` at the first non-space, skips
    white space again and refuses anything left over. When the text starts with `{` there
    is no leading space, so if `scan_once(text, 0)` ends exactly at the end of the text,
    `decode` would have returned the very same object (same scanner, same hooks, so the same
    duplicate, constant and float checks). Any other outcome, including StopIteration (which
    the scanner raises for a bad nested value and `decode` turns into JSONDecodeError),
    goes to `decode` itself, which then decides as it always did.
    """
    if text[:1] == "{":
        try:
            value, end = _SCAN_ONCE(text, 0)
        except StopIteration:
            end = -1
        if end == len(text):
            return value
    return _DECODER.decode(text)


def _parse_json(document: bytes) -> Any:
    """Strict JSON: UTF-8 only (RFC 8259 section 8.1), no duplicates, finite, bounded depth."""
    _check_depth(document)
    value = _decode(document.decode("utf-8"))
    if _SURROGATE_ESCAPE.search(document) is not None:
        # Lone surrogates anywhere (names or values) fail to encode: UnicodeEncodeError.
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    return value


def _b64decode(segment: bytes) -> bytes:
    """Canonical base64url without padding (RFC 7515 section 2): one spelling per value.

    `segment` already matched the alphabet, so it is canonical iff its length is possible
    and its last character's spare bits are zero: re-encoding's check, three times faster.
    """
    rest = len(segment) % 4
    tails = _CANONICAL_TAILS[rest]
    if tails is not None and segment[-1] not in tails:
        raise _Refused
    return binascii.a2b_base64(segment.translate(_TO_STANDARD) + _PADDING[rest], strict_mode=True)


def _b64encode(raw: bytes) -> bytes:
    return base64.urlsafe_b64encode(raw).rstrip(b"=")


def _split(token: str | bytes, max_bytes: int) -> tuple[Mapping[str, Any], bytes, bytes, bytes]:
    """Steps 1-4: (header, signing input as received, payload, signature); no key needed.

    The header is a `dict` when parsed by this call, a read-only view from the memo of
    verified headers otherwise (`_remember_header`).
    """
    if len(token) > max_bytes:
        raise TokenTooLargeError
    data = token.encode("utf-8") if isinstance(token, str) else bytes(token)
    if len(data) > max_bytes:
        raise TokenTooLargeError
    match = _COMPACT.fullmatch(data)
    if match is None:
        raise MalformedTokenError
    header_segment, payload_segment, signature_segment = match.group(1, 2, 3)
    known = _verified_headers.get(header_segment)
    # Every segment is decoded (step 2) before the header is looked at (steps 3-4), memo or
    # not, so a token failing both gets step 2's reason either way.
    header_raw = _b64decode(header_segment) if known is None else b""
    payload = _b64decode(payload_segment)
    signature = _b64decode(signature_segment)
    if known is not None:
        return known, data[: match.end(2)], payload, signature
    if len(header_raw) > MAX_HEADER_BYTES:
        raise MalformedTokenError
    header = _parse_json(header_raw)
    if type(header) is not dict or not header.keys() <= _HEADER_MEMBERS:
        raise MalformedTokenError
    if "typ" in header and type(header["typ"]) is not str:
        raise MalformedTokenError
    alg = header.get("alg")
    if type(alg) is not str or alg not in SUPPORTED_ALGS:
        raise UnsupportedAlgorithmError  # includes "none" and every alg we do not implement
    return header, data[: match.end(2)], payload, signature


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


def _claims_object(payload: bytes) -> dict[str, Any]:
    claims = _parse_json(payload)
    if type(claims) is not dict:  # RFC 7519 section 7.2 step 10: a JSON object
        raise MalformedTokenError
    return claims


def _remember_header(signing_input: bytes, header: Mapping[str, Any]) -> Mapping[str, Any]:
    """After step 7: memoise a freshly parsed header; return the shared read-only view."""
    if type(header) is not dict:
        return header  # it came from the memo
    if len(_verified_headers) >= MAX_VERIFIED_HEADERS:
        _verified_headers.clear()
    view = MappingProxyType(header)
    _verified_headers[signing_input[: signing_input.index(b".")]] = view
    return view


def _verified(
    token: str | bytes, keys: KeyLookup, max_bytes: int
) -> tuple[Mapping[str, Any], bytes, KeyMaterial]:
    """Steps 1-7 above: (header, payload bytes, key). Callers provide the error boundary."""
    header, signing_input, payload, signature = _split(token, max_bytes)
    kid = header.get("kid")
    if type(kid) is not str:
        raise UnknownKeyError  # required: trying every key is what RFC 8725 section 3.1 warns of
    key = keys.get(kid)
    if key is None:
        raise UnknownKeyError
    if header["alg"] != key.alg:
        # An RSA key never verifies an HS256 MAC (CVE-2024-33663 and its older cousins).
        raise UnsupportedAlgorithmError
    if not key.verify(signing_input, signature):
        raise BadSignatureError
    return _remember_header(signing_input, header), payload, key


@_error_boundary
def verify_compact(
    token: str | bytes, keys: KeyLookup, *, max_bytes: int = DEFAULT_MAX_TOKEN_BYTES
) -> VerifiedCompact:
    """Steps 1-7 above; the payload is returned as bytes, whatever it is (JWS conformance)."""
    return VerifiedCompact(*_verified(token, keys, max_bytes))


@_error_boundary
def decode_jws(
    token: str | bytes, keys: KeyLookup, *, max_bytes: int = DEFAULT_MAX_TOKEN_BYTES
) -> VerifiedJws:
    """Verify a compact JWS whose payload is a JSON object (a JWT claim set).

    Raises only `TokenError` subclasses. The payload is parsed after the signature is
    checked, so an unauthenticated sender can make us parse only a bounded header.
    """
    header, payload, key = _verified(token, keys, max_bytes)
    return VerifiedJws(header, _claims_object(payload), key)


@_error_boundary
def decode_jws_routed(
    token: str | bytes,
    select: Callable[[dict[str, Any]], KeyLookup],
    *,
    max_bytes: int = DEFAULT_MAX_TOKEN_BYTES,
) -> VerifiedJws:
    """`decode_jws` for a verifier that trusts several issuers (docs/keys.md).

    The claims are parsed (as strictly as ever, within `max_bytes`) BEFORE the signature
    check, so that `select` can pick the key set from the unverified `iss`; it raises a
    `TokenError` (IssuerMismatchError) for an issuer it does not know. Nothing else of the
    unverified claims is used, and every claim is checked after the signature as usual.
    """
    header, signing_input, payload, signature = _split(token, max_bytes)
    kid = header.get("kid")
    if type(kid) is not str:
        raise UnknownKeyError
    claims = _claims_object(payload)
    key = select(claims).get(kid)
    if key is None:
        raise UnknownKeyError
    if header["alg"] != key.alg:
        raise UnsupportedAlgorithmError
    if not key.verify(signing_input, signature):
        raise BadSignatureError
    return VerifiedJws(_remember_header(signing_input, header), claims, key)


@_error_boundary
def peek(
    token: str | bytes, *, max_bytes: int = DEFAULT_MAX_TOKEN_BYTES
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims parsed as strictly as `decode_jws` does, WITHOUT any signature check.

    For the operator CLI (`token inspect`) only: the result proves nothing about who made the
    token, so it must never feed an authorisation decision.
    """
    header, _signing_input, payload, _signature = _split(token, max_bytes)
    if type(header.get("kid")) is not str:
        raise UnknownKeyError
    return dict(header), _claims_object(payload)


def _compact_json(value: Mapping[str, Any]) -> bytes:
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8")


def encode_jws(claims: Mapping[str, Any], key: KeyMaterial, *, typ: str) -> str:
    """Sign `claims` as a compact JWS.

    The header is always exactly {"alg", "kid", "typ"} from the key and the caller's `typ`:
    no caller-supplied header members, so nothing can override `alg` (unlike
    `jose.jwt.encode(headers=...)`). Claims that are not strict JSON (NaN, lone surrogates,
    duplicate names after conversion, excessive depth, unserialisable values) raise
    `InvalidRequestError`: whatever this returns, `decode_jws` parses.
    """
    signing_input = jws_signing_input(claims, key, typ=typ)
    return jws_compact(signing_input, key.sign(signing_input))


def jws_signing_input(claims: Mapping[str, Any], key: KeyMaterial, *, typ: str) -> bytes:
    """`encode_jws` up to the signature: the checked, encoded header and payload.

    The header names `key`; its signature must come from the same `key` (tokens/signing.py
    computes it, possibly on another thread), so the header and the signature cannot name
    different keys even when the key ring is replaced in between.
    """
    if type(typ) is not str or not typ:
        raise ValueError("typ must be a non-empty string")
    header = _encoded_header(key.alg, key.kid, typ)
    try:
        payload = _compact_json(dict(claims))
        # json.dumps turns non-string names into strings (so {1: a, "1": b} would give a
        # duplicate) and nests without limit: re-parse so we only ever issue what we accept.
        _parse_json(payload)
    except (TypeError, ValueError):  # UnicodeEncodeError and _Refused are ValueErrors
        raise InvalidRequestError("claims are not serialisable as strict JSON") from None
    return header + b"." + _b64encode(payload)


@functools.lru_cache(maxsize=64)
def _encoded_header(alg: str, kid: str, typ: str) -> bytes:
    """The protected header, encoded: a function of its three members alone, and the same
    few (signing key x token type) for every token, so it is built once (Issue, Refresh)."""
    return _b64encode(_compact_json({"alg": alg, "kid": kid, "typ": typ}))


def jws_compact(signing_input: bytes, signature: bytes) -> str:
    """The compact serialisation (RFC 7515 section 7.1) of a signed `jws_signing_input`."""
    return (signing_input + b"." + _b64encode(signature)).decode("ascii")
