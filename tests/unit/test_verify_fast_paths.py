"""Issue 7's fast paths give exactly the answers of the slower code they stand in for.

* `strict_json._fast` (the JSON scanner called directly) and `JSONDecoder.decode`, hence
  `parse_json` and the strict parse as written before issue 7: the same value or the same
  refusal for any text, duplicates, NaN/Infinity, lone surrogates and depth included;
* the verifier's memo of verified headers (`cache.HeaderMemo`): filled only by tokens whose
  signature verified, read-only, bounded, and a memoised header skips none of the checks
  that can still fail (base64url of the other segments, key, signature, claims), so every
  token gets the reason it got without the memo;
* `HmacKey` and python-jose's `CryptographyHMACKey`: the same MACs, the same verdicts;
* the verify cache's LRU: recency, both bounds, byte accounting.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jose.backends.cryptography_backend import CryptographyHMACKey

from sidecar import strict_json
from sidecar.clock import FixedClock
from sidecar.errors import (
    BadSignatureError,
    MalformedTokenError,
    TokenError,
    UnknownKeyError,
    UnsupportedAlgorithmError,
)
from sidecar.jwa import ALGORITHMS
from sidecar.keys.material import KeyMaterial
from sidecar.keys.oct_key import HmacKey
from sidecar.keys.ring import KeyRing
from sidecar.tokens import jws
from sidecar.tokens.cache import MAX_VERIFIED_HEADERS, HeaderMemo, VerifyCache, entry_bytes
from sidecar.tokens.claims import ClaimsPolicy
from sidecar.tokens.model import Claims, TokenKind, VerifiedToken
from sidecar.tokens.revocation import RevocationMirror
from sidecar.tokens.verifier import Verifier
from tests.support.jose import KeysByKid as _Keys
from tests.support.jose import b64url as _b64
from tests.support.keys import make_key

FAST = settings(
    max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
CLAIMS = {"iss": "https://issuer.test", "sub": "alice", "exp": 1_700_000_060}


def _reference_parse(document: bytes) -> Any:
    """`parse_json` as it was before issue 7: `JSONDecoder.decode`, no fast path."""
    strict_json._check_depth(document)
    value = strict_json._STRICT.decode(document.decode("utf-8"))
    if strict_json._SURROGATE_ESCAPE.search(document) is not None:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    return value


def _outcome(parse: Callable[[Any], Any], document: Any) -> tuple[str, str]:
    """What a parse did: the value (repr: types and order count) or the exception type."""
    try:
        return "accepted", repr(parse(document))
    except Exception as error:  # noqa: BLE001 - every refusal is compared, whatever its type
        return "refused", type(error).__name__


# --- JSON: the scanner fast path --------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=10,
)
# JSON-looking noise: brackets, quotes, escapes, constants, numbers, white space.
json_noise = st.text(alphabet='{}[]":,0123456789.eE+-tfnulrasNIiy \t\n\\u\ud800', max_size=60)


@st.composite
def json_documents(draw: st.DrawFn) -> str:
    """Objects (valid or broken): duplicated members, constants, surrogates, junk around."""
    members = [
        json.dumps(name) + ":" + json.dumps(value)
        for name, value in draw(
            st.dictionaries(st.text(max_size=4), json_values, max_size=4)
        ).items()
    ]
    extra = draw(
        st.lists(
            st.sampled_from(
                [
                    '"a":1',  # with another '"a":1' below: a duplicate name
                    '"n":NaN',
                    '"i":-Infinity',
                    '"big":1e400',
                    '"s":"\\ud800"',  # a lone surrogate
                    '"p":"\\ud83d\\ude00"',  # a pair: fine
                    '"d":{"x":1,"x":2}',  # a nested duplicate
                    '"l":[1,2,x]',  # a bad nested value: StopIteration in the scanner
                    '"deep":' + "[" * 20 + "]" * 20,
                ]
            ),
            max_size=3,
        )
    )
    body = ",".join(members + extra)
    before = draw(st.sampled_from(["", " ", "\n", "x"]))
    after = draw(st.sampled_from(["", " ", "\t\n", "x", "}", ",", "{}"]))
    cut = draw(st.integers(min_value=0, max_value=3))
    text = before + "{" + body + "}" + after
    return text[: len(text) - cut] if draw(st.booleans()) else text


@FAST
@given(json_documents() | json_noise | st.text(max_size=40) | json_noise.map(lambda t: "{" + t))
def test_scanner_fast_path_decides_as_jsondecoder_decode(text: str) -> None:
    for decoder in (strict_json._STRICT, strict_json._CLAIMS, strict_json._MARKED):
        fast = strict_json._fast(decoder)
        assert _outcome(fast, text) == _outcome(decoder.decode, text)


@FAST
@given(
    json_documents().map(lambda t: t.encode("utf-8", "surrogatepass"))
    | st.binary(max_size=40)
    | json_values.map(lambda v: json.dumps(v).encode("utf-8"))
)
def test_parse_json_decides_as_the_strict_parse_before_issue_7(document: bytes) -> None:
    assert _outcome(strict_json.parse_json, document) == _outcome(_reference_parse, document)


@pytest.mark.parametrize(
    "document",
    [
        b'{"a":1,"a":2}',
        b'{"a":1,"b":{"c":1,"c":1}}',
        b'{"a":[{"x":1,"x":1}]}',
        b'{"sub":"alice","sub":"admin"}',
        b'{"a":NaN}',
        b'{"a":Infinity}',
        b'{"a":-Infinity}',
        b'{"a":1e400}',
        b'{"a":"\\ud800"}',
        b'{"\\udc00":1}',
        b'{"a":' + b"[" * (jws.MAX_JSON_DEPTH + 1) + b"]" * (jws.MAX_JSON_DEPTH + 1) + b"}",
        b'{"a":1}x',
        b'{"a":[1,}',
    ],
)
def test_fast_path_still_refuses_what_strict_json_refuses(document: bytes) -> None:
    with pytest.raises(Exception):  # noqa: B017 - any exception: the boundary maps them all
        strict_json.parse_json(document)
    key = make_key("HS256", "hs")
    with pytest.raises(TokenError) as info:
        jws.decode_jws(
            _token({"alg": "HS256", "kid": "hs", "typ": "at+jwt"}, document, key), _Keys(key)
        )
    # A claim set may hold 1e400 as JSON, but not as I-JSON (strict_json.py): CLAIM_INVALID.
    expected = "CLAIM_INVALID" if document == b'{"a":1e400}' else MalformedTokenError.reason
    assert info.value.reason == expected


# --- the memo of verified headers -------------------------------------------------------


def _token(header: dict[str, Any], payload: object, key: KeyMaterial) -> str:
    header_raw = json.dumps(header, separators=(",", ":")).encode()
    payload_raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    signing_input = f"{_b64(header_raw)}.{_b64(payload_raw)}"
    return f"{signing_input}.{_b64(key.sign(signing_input.encode('ascii')))}"


def _verifier(*keys: KeyMaterial) -> Verifier:
    """A verifier without a result cache, so every call parses: the header memo is what
    varies. Its policy requires only iss and exp, which CLAIMS carries."""
    policy = ClaimsPolicy(issuer=CLAIMS["iss"], required=frozenset({"iss", "exp"}))  # type: ignore[arg-type]
    return Verifier(
        ring=KeyRing(list(keys), signing_kid=keys[0].kid if keys else None),
        policies={TokenKind.ACCESS: policy, TokenKind.REFRESH: policy},
        clock=FixedClock(1_700_000_000.0),
        revocations=RevocationMirror(),
        cache=VerifyCache(max_entries=0, max_bytes=0),
        max_token_bytes=jws.DEFAULT_MAX_TOKEN_BYTES,
        max_batch=10,
    )


def _header_segment(token: str) -> bytes:
    return token.split(".")[0].encode("ascii")


def test_header_memo_is_filled_only_by_tokens_whose_signature_verified() -> None:
    key, other = make_key("HS256", "hs"), make_key("HS256", "other")
    verifier = _verifier(key)
    forged = _token({"alg": "HS256", "kid": "hs", "typ": "at+jwt"}, CLAIMS, other)
    with pytest.raises(BadSignatureError):
        verifier.verify(forged)
    with pytest.raises(UnknownKeyError):
        verifier.verify(_token({"alg": "HS256", "kid": "nobody"}, CLAIMS, key))
    assert len(verifier._headers) == 0
    good = _token({"alg": "HS256", "kid": "hs", "typ": "at+jwt"}, CLAIMS, key)
    verifier.verify(good)
    assert len(verifier._headers) == 1 and _header_segment(good) in verifier._headers


def test_memoised_header_is_shared_read_only() -> None:
    memo = HeaderMemo()
    key = make_key("HS256", "hs")
    token = _token({"alg": "HS256", "kid": "hs", "typ": "at+jwt"}, CLAIMS, key)
    parsed = jws.parse_compact(token, max_bytes=8192, known_headers=memo)
    memo.remember(parsed.header_segment, parsed.header)
    first = jws.parse_compact(token, max_bytes=8192, known_headers=memo).header
    second = jws.parse_compact(token, max_bytes=8192, known_headers=memo).header
    assert first is second
    assert isinstance(second, MappingProxyType)
    assert second == {"alg": "HS256", "kid": "hs", "typ": "at+jwt"}
    with pytest.raises(TypeError):
        second["alg"] = "none"  # type: ignore[index]


def test_header_memo_is_bounded() -> None:
    keys = [make_key("HS256", f"memo-{i}") for i in range(MAX_VERIFIED_HEADERS + 5)]
    verifier = _verifier(*keys)
    for key in keys:
        verifier.verify(_token({"alg": "HS256", "kid": key.kid, "typ": "at+jwt"}, CLAIMS, key))
        assert len(verifier._headers) <= MAX_VERIFIED_HEADERS


def test_two_verifiers_never_share_remembered_headers() -> None:
    key = make_key("HS256", "hs")
    first, second = _verifier(key), _verifier(key)
    first.verify(_token({"alg": "HS256", "kid": "hs", "typ": "at+jwt"}, CLAIMS, key))
    assert (len(first._headers), len(second._headers)) == (1, 0)


def _hostile_variants(good: str, key: KeyMaterial) -> dict[str, tuple[str, KeyRing]]:
    """Tokens sharing `good`'s header, each failing one later step; with their rings."""
    header, payload, signature = good.split(".")
    header_dict = json.loads(base64.urlsafe_b64decode(header + "=="))
    same = KeyRing([key])
    other_alg = KeyRing([make_key("HS512", key.kid)])  # the kid now names an HS512 key
    other = make_key(key.alg, "elsewhere")
    return {
        "payload not canonical base64url": (f"{header}.{payload[:-1]}B.{signature}", same),
        "signature not canonical base64url": (f"{header}.{payload}.{signature[:-1]}B", same),
        "signature with padding": (f"{header}.{payload}.{signature}=", same),
        "kid no longer in the ring": (good, KeyRing([other])),
        "kid now names a key of another alg": (good, other_alg),
        "bad signature": (f"{header}.{payload}.{_b64(b'x' * 32)}", same),
        "tampered payload": (f"{header}.{_b64(b'{}')}.{signature}", same),
        "payload not JSON": (_token(header_dict, b"{", key), same),
        "payload an array": (_token(header_dict, b"[]", key), same),
        "payload with a duplicate": (_token(header_dict, b'{"a":1,"a":2}', key), same),
        "payload with a number out of range": (
            _token(header_dict, {**CLAIMS, "n": 2**53}, key),
            same,
        ),
        "good": (good, same),
    }


def _reason(verifier: Verifier, token: str, ring: KeyRing) -> str:
    verifier.ring = ring
    try:
        verifier.verify(token)
    except TokenError as error:
        return error.reason
    return "OK"


@pytest.mark.parametrize("alg", ["HS256", "ES256"])
def test_memoised_header_gets_every_token_the_reason_it_gets_without_the_memo(alg: str) -> None:
    key = make_key(alg, "memo")
    good = _token({"alg": alg, "kid": "memo", "typ": "at+jwt"}, CLAIMS, key)
    variants = _hostile_variants(good, key)
    without = {name: _reason(_verifier(), token, ring) for name, (token, ring) in variants.items()}
    verifier = _verifier(key)
    verifier.verify(good)
    assert _header_segment(good) in verifier._headers
    with_memo = {name: _reason(verifier, token, ring) for name, (token, ring) in variants.items()}
    assert with_memo == without
    assert without["kid no longer in the ring"] == UnknownKeyError.reason
    assert without["kid now names a key of another alg"] == UnsupportedAlgorithmError.reason
    assert without["payload not canonical base64url"] == MalformedTokenError.reason
    assert without["payload with a number out of range"] == "CLAIM_INVALID"
    assert without["good"] == "OK"


# --- HMAC: HmacKey against python-jose's key object --------------------------------------


@FAST
@given(
    st.sampled_from(["HS256", "HS384", "HS512"]),
    st.binary(min_size=64, max_size=80),
    st.binary(max_size=300),
    st.sampled_from(["right", "random", "truncated", "extended", "flipped", "empty"]),
    st.binary(min_size=1, max_size=80),
)
def test_hmac_key_agrees_with_python_jose(
    alg: str, secret: bytes, message: bytes, kind: str, noise: bytes
) -> None:
    ours, theirs = HmacKey(secret, ALGORITHMS[alg]), CryptographyHMACKey(secret, alg)
    mac = theirs.sign(message)
    assert ours.sign(message) == mac
    signature = {
        "right": mac,
        "random": noise,
        "truncated": mac[:-1],
        "extended": mac + noise[:1],
        "flipped": bytes([mac[0] ^ 1]) + mac[1:],
        "empty": b"",
    }[kind]
    assert ours.verify(message, signature) is theirs.verify(message, signature)


def test_hmac_key_material_verifies_with_hmac_key_and_signs_with_python_jose() -> None:
    key = make_key("HS256", "hs")
    assert isinstance(key._verifier, HmacKey)
    assert isinstance(key._signer, CryptographyHMACKey)
    assert key.verify(b"m", key.sign(b"m"))
    assert not key.verify(b"n", key.sign(b"m"))


# --- the verify cache's LRU --------------------------------------------------------------


def _verified(jti: str) -> VerifiedToken:
    claims = Claims("iss", "sub", ("aud",), 2, 1, 0, jti, "", "", "", {"jti": jti})
    return VerifiedToken(TokenKind.ACCESS, "k", claims)


_W: tuple[None, None, None] = (None, None, None)


def _t(name: str) -> str:
    """A 100-character stand-in for a token's text (the cache never parses it)."""
    return name * 100


def test_cache_get_makes_an_entry_most_recently_used() -> None:
    key = make_key("HS256", "hs")
    cache = VerifyCache(max_entries=2, max_bytes=10**6)
    cache.put(_t("a"), _verified("a"), key, issuer=None, window=_W)
    cache.put(_t("b"), _verified("b"), key, issuer=None, window=_W)
    assert cache.get(_t("a")) is not None
    cache.put(_t("c"), _verified("c"), key, issuer=None, window=_W)
    assert cache.get(_t("b")) is None
    assert cache.get(_t("a")) is not None and cache.get(_t("c")) is not None


def test_cache_byte_accounting_follows_replace_discard_and_clear() -> None:
    key = make_key("HS256", "hs")
    cache = VerifyCache(max_entries=10, max_bytes=entry_bytes(100) * 3)
    cache.put(_t("a"), _verified("a"), key, issuer=None, window=_W)
    cache.put(_t("a"), _verified("a2"), key, issuer=None, window=_W)  # replaced, not added
    assert (len(cache), cache.current_bytes) == (1, entry_bytes(100))
    cache.put(_t("b"), _verified("b"), key, issuer=None, window=_W)
    cache.put(_t("c"), _verified("c"), key, issuer=None, window=_W)
    cache.put(_t("d"), _verified("d"), key, issuer=None, window=_W)  # over the byte bound: "a" goes
    assert cache.get(_t("a")) is None
    assert (len(cache), cache.current_bytes) == (3, entry_bytes(100) * 3)
    cache.discard(_t("b"))
    assert (len(cache), cache.current_bytes) == (2, entry_bytes(100) * 2)
    cache.clear()
    assert (len(cache), cache.current_bytes) == (0, 0)
