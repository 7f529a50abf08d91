"""Strict JSON, the one parser for what we read as JSON: token headers and claim sets, key
files, JWKS documents (ours and external issuers') and key-set manifests (keys/loader.py).

A token's header and claims are attacker-chosen bytes until the signature says otherwise,
and even then they go on into protobuf, logs and HTTP headers; an external issuer's JWKS is
fetched from the network. So all of them are parsed with one set of rules, stricter than
`json.loads` (issue 12: there used to be a second, laxer parser for key files):

* UTF-8 only (RFC 8259 section 8.1); no lone surrogate escapes (RFC 8259 section 8.2: they
  decode to a str that cannot be encoded again, and would fail far away, e.g. in protobuf);
* no duplicate member names (RFC 7515 section 5.2 step 4, RFC 8725 section 3.1: Python keeps
  the last, other parsers the first; we refuse rather than guess);
* no NaN / Infinity literals (not JSON, RFC 8259 section 6);
* nesting at most `MAX_JSON_DEPTH` (the C scanner recurses per level).

Claim sets are also held to I-JSON's number range (RFC 7493 section 2.2), `parse_claims`:

* an integer literal (no fraction, no exponent) must lie in [-(2**53-1), 2**53-1], the
  integers a double holds exactly (a larger one is refused, not rounded);
* any other number must be finite as a double (`1e400` is refused, not turned into inf);
  its precision beyond a double's is rounded, as every JSON parser does.

A claim set breaking the number rule is still JSON, so it is `CLAIM_INVALID` (naming the
top-level claim that holds the number), not `TOKEN_MALFORMED`; a header breaking it is
malformed, like any other bad header. The point is that whatever a verified token carries
fits a protobuf `Struct` (doubles) and int64 fields, and means the same to every consumer.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

from sidecar.errors import ClaimError, MalformedTokenError

__all__ = [
    "MAX_EXACT_INTEGER",
    "MAX_JSON_DEPTH",
    "JsonRefused",
    "parse_claims",
    "parse_json",
    "unverified_issuer",
]

# Nesting allowed in header and claims (RFC 8693 `act` chains nest a few levels). The json C
# scanner recurses per level, so an unbounded depth is a RecursionError on a few KiB.
MAX_JSON_DEPTH = 16
# RFC 7493 section 2.2: the integers an IEEE 754 double represents exactly.
MAX_EXACT_INTEGER = 2**53 - 1
# An integer literal this long or longer may be out of range; shorter ones never are
# (15 digits < 10**15 < 2**53). Also what keeps `int()` far from its 4300-digit limit.
_MAYBE_LARGE_INT_CHARS = 16

# A JSON string or a bracket; used only when a document has many brackets, to measure depth.
_JSON_STRUCTURE = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)
# A \u escape of a UTF-16 surrogate (paired ones are fine; lone ones fail to encode).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")


class JsonRefused(ValueError):
    """Not strict JSON; the caller's error boundary turns it into `TOKEN_MALFORMED`."""


class _OutOfRange(ValueError):
    """A number outside I-JSON's range (claims only): `CLAIM_INVALID`."""


class _OutOfRangeMarker:
    """Stands in for an out-of-range number when only the document's shape is wanted."""

    __slots__ = ()


_OUT_OF_RANGE = _OutOfRangeMarker()


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise JsonRefused("duplicate member names")
    return obj


def _refuse_constant(name: str) -> Any:
    raise JsonRefused(f"non-finite number {name}")  # NaN, Infinity, -Infinity


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 overflows to inf
        raise JsonRefused("non-finite number")
    return value


def _ijson_int(text: str) -> int:
    if len(text) < _MAYBE_LARGE_INT_CHARS:
        return int(text)
    if len(text) - (text[0] == "-") > _MAYBE_LARGE_INT_CHARS:
        raise _OutOfRange  # never int() a 400-digit literal
    value = int(text)
    if -MAX_EXACT_INTEGER <= value <= MAX_EXACT_INTEGER:
        return value
    raise _OutOfRange


def _ijson_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _OutOfRange
    return value


def _marked_int(text: str) -> Any:
    try:
        return _ijson_int(text)
    except _OutOfRange:
        return _OUT_OF_RANGE


def _marked_float(text: str) -> Any:
    try:
        return _ijson_float(text)
    except _OutOfRange:
        return _OUT_OF_RANGE


def _json_decoder(
    parse_float: Callable[[str], Any], parse_int: Callable[[str], Any] | None = None
) -> json.JSONDecoder:
    return json.JSONDecoder(
        object_pairs_hook=_object_without_duplicates,
        parse_constant=_refuse_constant,
        parse_float=parse_float,
        parse_int=parse_int,
    )


def _fast(decoder: json.JSONDecoder) -> Callable[[str], Any]:
    """`decoder.decode`, ~0.5 µs cheaper for the usual document (issue 7).

    `JSONDecoder.decode` skips white space, calls `scan_once` at the first non-space, skips
    white space again and refuses anything left over. When the text starts with `{` there
    is no leading space, so if `scan_once(text, 0)` ends exactly at the end of the text,
    `decode` would have returned the very same object (same scanner, same hooks). Any other
    outcome, StopIteration included, goes to `decode` itself, which decides as it always did.
    """
    # Set by JSONDecoder.__init__ (json/decoder.py), absent from typeshed's stub.
    scan_once: Callable[[str, int], tuple[Any, int]] = decoder.scan_once  # type: ignore[attr-defined]
    decode = decoder.decode

    def fast_decode(text: str) -> Any:
        if text[:1] == "{":
            try:
                value, end = scan_once(text, 0)
            except StopIteration:
                end = -1
            if end == len(text):
                return value
        return decode(text)

    return fast_decode


# Headers: finite numbers of any size. Claims: I-JSON numbers. Marked: claims' structure
# rules, out-of-range numbers replaced by a marker (to read `iss`, or name the bad claim).
_STRICT = _json_decoder(_finite_float)
_CLAIMS = _json_decoder(_ijson_float, _ijson_int)
_MARKED = _json_decoder(_marked_float, _marked_int)
_decode_strict = _fast(_STRICT)
_decode_claims = _fast(_CLAIMS)
_decode_marked = _fast(_MARKED)


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
                raise JsonRefused(f"nested deeper than {MAX_JSON_DEPTH}")
        elif char in (b"]", b"}"):
            depth -= 1


def _parse(document: bytes, decode: Callable[[str], Any]) -> Any:
    _check_depth(document)
    value = decode(document.decode("utf-8"))
    if _SURROGATE_ESCAPE.search(document) is not None:
        # Lone surrogates anywhere (names or values) fail to encode: UnicodeEncodeError.
        json.dumps(value, ensure_ascii=False, default=repr).encode("utf-8")
    return value


def parse_json(document: bytes) -> Any:
    """Strict JSON (headers, and what `encode_jws` re-checks); raises ValueError subclasses
    (JsonRefused, UnicodeError, json.JSONDecodeError) or RecursionError-free failures."""
    return _parse(document, _decode_strict)


def parse_claims(payload: bytes) -> dict[str, Any]:
    """A claim set (RFC 7519 section 7.2 step 10): a strict JSON object, I-JSON numbers.

    Raises `MalformedTokenError` when it is not one (whatever its numbers), otherwise
    `ClaimError` (CLAIM_INVALID) naming the top-level claim that holds a number outside
    I-JSON's range.
    """
    try:
        claims = _parse(payload, _decode_claims)
    except _OutOfRange:
        claims = _parse_marked(payload)  # decides between malformed and out of range
        if claims is None:
            raise MalformedTokenError from None
        raise ClaimError(_claim_holding_marker(claims)) from None
    except (ValueError, RecursionError):
        raise MalformedTokenError from None
    if type(claims) is not dict:
        raise MalformedTokenError
    return claims


def unverified_issuer(payload: bytes) -> str | None:
    """The `iss` a payload names, read with `parse_claims`' structure rules but tolerating
    out-of-range numbers (their refusal comes later, after the signature); None when the
    payload is no strict JSON object or has no string `iss`. Never a decision by itself."""
    claims = _parse_marked(payload)
    iss = claims.get("iss") if claims is not None else None
    return iss if type(iss) is str else None


def _parse_marked(payload: bytes) -> dict[str, Any] | None:
    """The claim set with out-of-range numbers replaced by a marker; None if not one."""
    try:
        claims = _parse(payload, _decode_marked)
    except (ValueError, RecursionError):
        return None
    return claims if type(claims) is dict else None


def _claim_holding_marker(claims: dict[str, Any]) -> str:
    """The first top-level claim, in document order, holding an out-of-range number."""
    for name, value in claims.items():
        if _holds_marker(value):
            return name
    return ""  # pragma: no cover - the strict parse found one


def _holds_marker(value: Any) -> bool:
    if value is _OUT_OF_RANGE:
        return True
    if type(value) is dict:
        return any(_holds_marker(v) for v in value.values())
    if type(value) is list:
        return any(_holds_marker(v) for v in value)
    return False
