"""The strict compact-JWS layer: every refusal of ../shared/SECURITY.md, with its reason."""

from __future__ import annotations

import base64
import hashlib
import hmac
import inspect
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from sidecar.errors import (
    BadSignatureError,
    ClaimError,
    InvalidRequestError,
    MalformedTokenError,
    TokenError,
    TokenTooLargeError,
    UnknownKeyError,
    UnsupportedAlgorithmError,
)
from sidecar.jwa import HEADER_NAMES as SUPPORTED_ALGS
from sidecar.keys.material import KeyMaterial
from sidecar.tokens.jws import (
    DEFAULT_MAX_TOKEN_BYTES,
    MAX_HEADER_BYTES,
    decode_jws,
    peek,
    verify_compact,
)
from sidecar.tokens.signing import encode_jws
from tests.support.jose import KeysByKid as _Keys
from tests.support.jose import b64url as _b64
from tests.support.keys import make_key, private_key

ALL_ALGS = sorted(SUPPORTED_ALGS)
CLAIMS: dict[str, Any] = {"iss": "https://issuer.test", "sub": "alice", "exp": 1_700_000_060}


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


def _token(header: object, payload: object, key: KeyMaterial | None = None) -> str:
    """A compact token from raw parts (bytes are used as they are), signed by `key`."""
    header_raw = header if isinstance(header, bytes) else _json(header)
    payload_raw = payload if isinstance(payload, bytes) else _json(payload)
    signing_input = f"{_b64(header_raw)}.{_b64(payload_raw)}"
    signature = key.sign(signing_input.encode("ascii")) if key is not None else b"\x01" * 32
    return f"{signing_input}.{_b64(signature)}"


def _hs256() -> KeyMaterial:
    return make_key("HS256", "hs")


def _header(key: KeyMaterial, **extra: object) -> dict[str, object]:
    return {"alg": key.alg, "kid": key.kid, "typ": "at+jwt", **extra}


# --- round trip and issuing -------------------------------------------------------------


@pytest.mark.parametrize("alg", ALL_ALGS)
def test_round_trip_for_every_supported_algorithm(alg: str) -> None:
    key = make_key(alg)
    token = encode_jws(CLAIMS, key, typ="at+jwt")
    verified = decode_jws(token, _Keys(key))
    assert verified.header == {"alg": alg, "kid": key.kid, "typ": "at+jwt"}
    assert verified.claims == CLAIMS
    assert verified.key is key


def test_decode_accepts_bytes_token() -> None:
    key = _hs256()
    token = encode_jws(CLAIMS, key, typ="at+jwt")
    assert decode_jws(token.encode("ascii"), _Keys(key)).claims == CLAIMS


def test_encode_keeps_non_ascii_claims_as_utf8() -> None:
    key = _hs256()
    token = encode_jws({"name": "Zoë ✓ 😀"}, key, typ="at+jwt")
    payload = base64.urlsafe_b64decode(token.split(".")[1] + "==")
    assert payload == '{"name":"Zoë ✓ 😀"}'.encode()
    assert decode_jws(token, _Keys(key)).claims == {"name": "Zoë ✓ 😀"}


def test_encode_header_is_exactly_alg_kid_typ_and_claims_cannot_inject_headers() -> None:
    key = make_key("RS256")
    hostile = {"alg": "none", "kid": "other", "typ": "rt+jwt", "jku": "https://evil.test"}
    token = encode_jws(hostile, key, typ="at+jwt")
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header == {"alg": "RS256", "kid": key.kid, "typ": "at+jwt"}
    assert decode_jws(token, _Keys(key)).claims == hostile
    assert set(inspect.signature(encode_jws).parameters) == {"claims", "key", "typ"}


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": float("nan")},
        {"exp": float("inf")},
        {"x": object()},
        {1: "a", "1": "b"},  # json.dumps would emit a duplicate name
        {"s": "\ud800"},  # a lone surrogate is not UTF-8
    ],
    ids=["nan", "inf", "object", "duplicate-after-conversion", "lone-surrogate"],
)
def test_encode_refuses_claims_that_are_not_strict_json(claims: dict[Any, Any]) -> None:
    with pytest.raises(InvalidRequestError):
        encode_jws(claims, _hs256(), typ="at+jwt")


def test_encode_refuses_empty_typ() -> None:
    with pytest.raises(ValueError):
        encode_jws(CLAIMS, _hs256(), typ="")


# --- size and structure -----------------------------------------------------------------


def test_decode_rejects_token_over_size_cap_before_parsing() -> None:
    with pytest.raises(TokenTooLargeError) as info:
        decode_jws("\x00" * (DEFAULT_MAX_TOKEN_BYTES + 1), _Keys())
    assert info.value.reason == "TOKEN_TOO_LARGE"


def test_decode_rejects_non_ascii_token_whose_utf8_exceeds_cap() -> None:
    with pytest.raises(TokenTooLargeError):
        decode_jws("é" * 600, _Keys(), max_bytes=1000)


def test_decode_accepts_token_exactly_at_size_cap() -> None:
    key = _hs256()
    token = encode_jws(CLAIMS, key, typ="at+jwt")
    assert decode_jws(token, _Keys(key), max_bytes=len(token)).claims == CLAIMS
    with pytest.raises(TokenTooLargeError):
        decode_jws(token, _Keys(key), max_bytes=len(token) - 1)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t.rsplit(".", 1)[0],  # two segments
        lambda t: t + ".AAAA",  # four segments
        lambda t: t.split(".")[0] + ".." + t.split(".")[2],  # empty payload (detached)
        lambda t: t.rsplit(".", 1)[0] + ".",  # empty signature
        lambda t: "." + t.split(".", 1)[1],  # empty header
        lambda t: " " + t,
        lambda t: t + "\n",
        lambda t: t.replace(".", " . ", 1),
        lambda t: "",
        lambda t: t.replace(".", "é", 1),
        lambda t: json.dumps({"protected": t.split(".")[0], "signature": t.split(".")[2]}),
    ],
    ids=[
        "two-segments",
        "four-segments",
        "empty-payload",
        "empty-signature",
        "empty-header",
        "leading-space",
        "trailing-newline",
        "spaces-around-dot",
        "empty",
        "non-ascii",
        "json-serialisation",
    ],
)
def test_decode_rejects_non_compact_structure(mangle: Any) -> None:
    key = _hs256()
    token = mangle(encode_jws(CLAIMS, key, typ="at+jwt"))
    with pytest.raises(MalformedTokenError) as info:
        decode_jws(token, _Keys(key))
    assert info.value.reason == "TOKEN_MALFORMED"


def _non_canonical_tail(segment: str) -> str:
    """The same bytes, spelled with non-zero unused trailing bits."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    unused_bits = {2: 4, 3: 2}[len(segment) % 4]
    last = alphabet.index(segment[-1])
    assert last % (1 << unused_bits) == 0
    return segment[:-1] + alphabet[last + 1]


def _unaligned_token(key: KeyMaterial) -> list[str]:
    """Segments whose lengths are not multiples of 4, so each has padding and unused bits."""
    for size in range(8):
        parts = encode_jws({"p": "x" * size}, key, typ="at+jwt").split(".")
        if all(len(part) % 4 for part in parts):
            return parts
    raise AssertionError("no unaligned token")


@pytest.mark.parametrize("index", [0, 1, 2], ids=["header", "payload", "signature"])
@pytest.mark.parametrize(
    "respell",
    [
        lambda s: s + "=" * (-len(s) % 4),
        lambda s: s + "==",
        lambda s: "+" + s[1:],
        lambda s: "/" + s[1:],
        lambda s: s[:4] + " " + s[4:],
        lambda s: s[:4] + "\n" + s[4:],
        lambda s: s[:4] + "!" + s[4:],
        _non_canonical_tail,
        lambda s: s + "A" * ((1 - len(s)) % 4),  # length 1 mod 4 cannot be base64
    ],
    ids=[
        "padding",
        "extra-padding",
        "plus",
        "slash",
        "space",
        "newline",
        "bang",
        "trailing-bits",
        "impossible-length",
    ],
)
def test_decode_rejects_non_canonical_base64url(index: int, respell: Any) -> None:
    key = _hs256()
    parts = _unaligned_token(key)
    segment = respell(parts[index])
    assert segment != parts[index]
    parts[index] = segment
    with pytest.raises(MalformedTokenError):
        decode_jws(".".join(parts), _Keys(key))


# --- header -------------------------------------------------------------------------------


def test_decode_rejects_duplicate_header_members() -> None:
    key = _hs256()
    header = b'{"alg":"none","kid":"hs","alg":"HS256","typ":"at+jwt"}'
    with pytest.raises(MalformedTokenError):
        decode_jws(_token(header, CLAIMS, key), _Keys(key))


@pytest.mark.parametrize(
    "header",
    [
        b'{"alg":"HS256","kid":"hs","typ":NaN}',
        b'{"alg":"HS256","kid":"hs","typ":Infinity}',
        b'{"alg":"HS256","kid":"hs","typ":-Infinity}',
        b'{"alg":"HS256","kid":"hs","typ":1e400}',
        b'["HS256","hs"]',
        b'"HS256"',
        b"null",
        b'{"alg":"HS256","kid":"hs"',
        b'{"alg":"HS256","kid":"hs"} x',
        b'\xef\xbb\xbf{"alg":"HS256","kid":"hs"}',  # UTF-8 BOM
        '{"alg":"HS256","kid":"hs"}'.encode("utf-16"),
        b'{"alg":"HS256","kid":"h\xe9"}',  # Latin-1, not UTF-8
        b'{"alg":"HS256","kid":"\\ud800"}',  # lone surrogate escape
        b'{"alg":"HS256","kid":"hs","typ":"at+jwt","typ":"at+jwt"}',
    ],
    ids=[
        "nan",
        "infinity",
        "minus-infinity",
        "overflowing-float",
        "array",
        "string",
        "null",
        "truncated",
        "trailing-garbage",
        "bom",
        "utf16",
        "latin1",
        "lone-surrogate",
        "duplicate-typ",
    ],
)
def test_decode_rejects_header_that_is_not_strict_json_object(header: bytes) -> None:
    key = _hs256()
    with pytest.raises(MalformedTokenError):
        decode_jws(_token(header, CLAIMS, key), _Keys(key))


def test_decode_rejects_3kb_nested_header_without_recursion_error() -> None:
    key = _hs256()
    header = b'{"alg":"HS256","kid":"hs","typ":' + b"[" * 3000 + b"]" * 3000 + b"}"
    with pytest.raises(MalformedTokenError):
        decode_jws(_token(header, CLAIMS, key), _Keys(key))


def test_decode_rejects_deep_header_within_size_limit() -> None:
    key = _hs256()
    header = b'{"alg":"HS256","kid":' + b"[" * 400 + b"]" * 400 + b"}"
    assert len(header) <= MAX_HEADER_BYTES
    with pytest.raises(MalformedTokenError):
        decode_jws(_token(header, CLAIMS, key), _Keys(key))


def test_decode_rejects_header_over_1kib() -> None:
    key = _hs256()
    header = _header(key, typ="a" * MAX_HEADER_BYTES)
    with pytest.raises(MalformedTokenError):
        decode_jws(_token(header, CLAIMS, key), _Keys(key))


@pytest.mark.parametrize(
    ("member", "value"),
    [
        ("crit", ["exp"]),
        ("b64", False),
        ("zip", "DEF"),
        ("jku", "https://attacker.test/jwks"),
        ("x5u", "https://attacker.test/cert"),
        ("x5c", ["MIIB"]),
        ("jwk", {"kty": "oct", "k": "AAAA"}),
        ("cty", "JWT"),  # no nested JWTs (RFC 7519 section 5.2)
        ("x5t", "abc"),
        ("enc", "A128GCM"),
        ("foo", "bar"),
    ],
)
def test_decode_rejects_header_member_outside_allow_list(member: str, value: object) -> None:
    key = _hs256()
    token = _token(_header(key, **{member: value}), CLAIMS, key)  # correctly signed
    with pytest.raises(MalformedTokenError):
        decode_jws(token, _Keys(key))


@pytest.mark.parametrize("typ", [1, None, ["at+jwt"], {"a": 1}, True])
def test_decode_rejects_non_string_typ(typ: object) -> None:
    key = _hs256()
    with pytest.raises(MalformedTokenError):
        decode_jws(_token(_header(key, typ=typ), CLAIMS, key), _Keys(key))


@pytest.mark.parametrize(
    "alg",
    [
        "none",
        "None",
        "NONE",
        "",
        "hs256",
        "HS256 ",
        "PS257",
        "Ed448",
        "ES256K",
        "RSA1_5",
        None,
        256,
        ["HS256"],
        {"HS256": 1},
        True,
    ],
)
def test_decode_rejects_alg_we_do_not_implement(alg: object) -> None:
    key = _hs256()
    token = _token({"alg": alg, "kid": key.kid}, CLAIMS, key)
    with pytest.raises(UnsupportedAlgorithmError) as info:
        decode_jws(token, _Keys(key))
    assert info.value.reason == "ALGORITHM_NOT_ALLOWED"


def test_decode_rejects_missing_alg() -> None:
    key = _hs256()
    with pytest.raises(UnsupportedAlgorithmError):
        decode_jws(_token({"kid": key.kid}, CLAIMS, key), _Keys(key))


def test_decode_rejects_alg_none_with_any_signature() -> None:
    key = _hs256()
    header = _b64(b'{"alg":"none","kid":"hs"}')
    token = f"{header}.{_b64(_json(CLAIMS))}.AA"
    with pytest.raises(UnsupportedAlgorithmError):
        decode_jws(token, _Keys(key))


@pytest.mark.parametrize("kid", [None, 7, ["hs"], {"k": "hs"}, True])
def test_decode_rejects_missing_or_non_string_kid(kid: object) -> None:
    key = _hs256()
    header: dict[str, object] = {"alg": "HS256", "typ": "at+jwt"}
    if kid is not None:
        header["kid"] = kid
    with pytest.raises(UnknownKeyError) as info:
        decode_jws(_token(header, CLAIMS, key), _Keys(key))
    assert info.value.reason == "KEY_UNKNOWN"


@pytest.mark.parametrize("kid", ["other", "HS", "hs ", ""])
def test_decode_rejects_unknown_kid(kid: str) -> None:
    key = _hs256()
    token = _token({"alg": "HS256", "kid": kid}, CLAIMS, key)
    with pytest.raises(UnknownKeyError):
        decode_jws(token, _Keys(key))


def test_decode_rejects_hs256_header_against_rs256_key() -> None:
    rsa_key = make_key("RS256", "rsa")
    token = _token({"alg": "HS256", "kid": "rsa", "typ": "at+jwt"}, CLAIMS, _hs256())
    with pytest.raises(UnsupportedAlgorithmError) as info:
        decode_jws(token, _Keys(rsa_key))
    assert info.value.reason == "ALGORITHM_NOT_ALLOWED"


@pytest.mark.parametrize("encoding", ["pem", "der", "pkcs1-pem", "openssh"])
def test_decode_rejects_hs256_mac_keyed_with_rsa_public_key_bytes(encoding: str) -> None:
    """Algorithm confusion (CVE-2015-9235, CVE-2024-33663): the public key as an HMAC secret."""
    rsa_key = make_key("RS256", "rsa")
    private = private_key("RS256", "rsa")
    assert not isinstance(private, bytes)
    public = private.public_key()
    formats = {
        "pem": (serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        "der": (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
        "pkcs1-pem": (serialization.Encoding.PEM, serialization.PublicFormat.PKCS1),
        "openssh": (serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH),
    }
    secret = public.public_bytes(*formats[encoding])
    header = _b64(_json({"alg": "HS256", "kid": "rsa"}))
    signing_input = f"{header}.{_b64(_json(CLAIMS))}"
    mac = hmac.new(secret, signing_input.encode("ascii"), hashlib.sha256).digest()
    with pytest.raises(UnsupportedAlgorithmError):
        decode_jws(f"{signing_input}.{_b64(mac)}", _Keys(rsa_key))


@pytest.mark.parametrize(
    ("key_alg", "header_alg"),
    [("RS256", "RS512"), ("ES256", "ES384"), ("HS256", "HS512"), ("ES256", "RS256")],
)
def test_decode_rejects_header_alg_different_from_key_alg(key_alg: str, header_alg: str) -> None:
    key = make_key(key_alg, "k")
    token = encode_jws(CLAIMS, key, typ="at+jwt")
    header = _b64(_json({"alg": header_alg, "kid": "k", "typ": "at+jwt"}))
    with pytest.raises(UnsupportedAlgorithmError):
        decode_jws(header + token[token.index(".") :], _Keys(key))


# --- signature ----------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ALL_ALGS)
def test_decode_rejects_signature_by_another_key_with_same_kid(alg: str) -> None:
    signer = make_key(alg, "shared")
    verifier = make_key(alg, "shared-other")
    impostor = KeyMaterial(
        "shared", alg, verifier.kty, False, verifier.thumbprint, verifier._verifier
    )
    token = encode_jws(CLAIMS, signer, typ="at+jwt")
    with pytest.raises(BadSignatureError) as info:
        decode_jws(token, _Keys(impostor))
    assert info.value.reason == "SIGNATURE_INVALID"


@pytest.mark.parametrize("alg", ["HS256", "RS256", "ES256"])
def test_decode_rejects_tampered_payload(alg: str) -> None:
    key = make_key(alg)
    header, _payload, signature = encode_jws(CLAIMS, key, typ="at+jwt").split(".")
    forged = _b64(_json({**CLAIMS, "sub": "admin"}))
    with pytest.raises(BadSignatureError):
        decode_jws(f"{header}.{forged}.{signature}", _Keys(key))


@pytest.mark.parametrize("alg", ["HS256", "RS256", "ES256"])
def test_decode_rejects_truncated_or_extended_signature(alg: str) -> None:
    key = make_key(alg)
    signing_input, signature = encode_jws(CLAIMS, key, typ="at+jwt").rsplit(".", 1)
    raw = base64.urlsafe_b64decode(signature + "==")
    for bad in (raw[:-1], raw + b"\x00", b"\x00" * len(raw), raw[:1]):
        with pytest.raises(BadSignatureError):
            decode_jws(f"{signing_input}.{_b64(bad)}", _Keys(key))


def test_decode_rejects_ecdsa_signature_in_der_form() -> None:
    key = make_key("ES256")
    signing_input, signature = encode_jws(CLAIMS, key, typ="at+jwt").rsplit(".", 1)
    raw = base64.urlsafe_b64decode(signature + "==")
    r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    with pytest.raises(BadSignatureError):
        decode_jws(f"{signing_input}.{_b64(encode_dss_signature(r, s))}", _Keys(key))


# --- payload ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        b'["a"]',
        b'"claims"',
        b"42",
        b"null",
        b"foo",
        b'{"sub":"alice","sub":"admin"}',
        b'{"exp":NaN}',
        b'{"exp":Infinity}',
        b'{"exp":1e400,"exp":1}',
        b'{"sub":"\xff"}',
        b'{"sub":"\\udc00"}',
        b'{"a":' + b"[" * 2500 + b"]" * 2500 + b"}",
        b'{"a":' + b'{"a":' * 20 + b"1" + b"}" * 21,
    ],
    ids=[
        "array",
        "string",
        "number",
        "null",
        "not-json",
        "duplicate-sub",
        "nan",
        "infinity",
        "overflowing-float-and-duplicate",
        "invalid-utf8",
        "lone-surrogate",
        "deep-array",
        "deep-object",
    ],
)
def test_decode_rejects_payload_that_is_not_strict_json_object(payload: bytes) -> None:
    key = _hs256()
    with pytest.raises(MalformedTokenError):
        decode_jws(_token(_header(key), payload, key), _Keys(key))


@pytest.mark.parametrize(
    ("payload", "claim"),
    [
        (b'{"exp":1e400}', "exp"),
        (b'{"sub":"a","n":-1E+309}', "n"),
        (b'{"n":9007199254740992}', "n"),
        (b'{"n":-9007199254740992}', "n"),
        (b'{"a":1,"deep":{"x":[1,2,' + b"9" * 400 + b"]}}", "deep"),
        (b'{"big":' + b"7" * 5000 + b"}", "big"),
    ],
    ids=["overflowing-float", "negative-overflow", "2**53", "-2**53", "400-digits", "5000-digits"],
)
def test_decode_refuses_numbers_outside_i_json_as_claim_invalid(payload: bytes, claim: str) -> None:
    # RFC 7493 section 2.2: integers beyond +-(2**53-1), numbers a double cannot hold.
    key = _hs256()
    with pytest.raises(ClaimError) as info:
        decode_jws(_token(_header(key), payload, key), _Keys(key), max_bytes=1 << 16)
    assert (info.value.reason, info.value.claim) == ("CLAIM_INVALID", claim)


def test_decode_accepts_the_edges_of_the_i_json_range() -> None:
    key = _hs256()
    payload = b'{"a":9007199254740991,"b":-9007199254740991,"c":1e308,"d":1.5e-400,"e":-0}'
    claims = decode_jws(_token(_header(key), payload, key), _Keys(key)).claims
    assert claims == {"a": 2**53 - 1, "b": -(2**53 - 1), "c": 1e308, "d": 0.0, "e": 0}


def test_decode_accepts_paired_surrogate_escapes_and_brackets_inside_strings() -> None:
    key = _hs256()
    payload = b'{"emoji":"\\ud83d\\ude00","s":"' + b"[{" * 40 + b'"}'
    claims = decode_jws(_token(_header(key), payload, key), _Keys(key)).claims
    assert claims == {"emoji": "😀", "s": "[{" * 40}


def test_verify_compact_returns_payload_bytes_that_need_not_be_json() -> None:
    key = _hs256()
    verified = verify_compact(_token(_header(key), b"foo", key), _Keys(key))
    assert verified.payload == b"foo"
    assert verified.key is key


# --- error boundary -----------------------------------------------------------------------


class _BrokenKeys:
    def get(self, kid: str) -> KeyMaterial | None:
        raise RuntimeError("secret detail " + kid)


def test_decode_turns_unexpected_exceptions_into_malformed_without_text() -> None:
    key = _hs256()
    token = encode_jws(CLAIMS, key, typ="at+jwt")
    with pytest.raises(MalformedTokenError) as info:
        decode_jws(token, _BrokenKeys())
    assert "secret" not in str(info.value)
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


@pytest.mark.parametrize("token", [None, 42, ["a.b.c"], object()])
def test_decode_rejects_values_that_are_not_tokens(token: Any) -> None:
    with pytest.raises(MalformedTokenError):
        decode_jws(token, _Keys())


def test_error_messages_never_contain_token_text() -> None:
    key = _hs256()
    token = _token(_header(key, kid="very-secret-kid"), CLAIMS, key)
    with pytest.raises(TokenError) as info:
        decode_jws(token, _Keys(key))
    assert "very-secret-kid" not in str(info.value)
    assert token not in str(info.value)


# --- peek ---------------------------------------------------------------------------------


def test_peek_parses_without_verifying_the_signature() -> None:
    key = _hs256()
    token = _token(_header(key), CLAIMS)  # garbage signature
    assert peek(token) == (_header(key), CLAIMS)


@pytest.mark.parametrize(
    ("header", "payload", "error"),
    [
        (b'{"alg":"HS256","kid":"a","kid":"b"}', _json(CLAIMS), MalformedTokenError),
        (_json({"alg": "HS256", "kid": "a", "jku": "x"}), _json(CLAIMS), MalformedTokenError),
        (_json({"alg": "none", "kid": "a"}), _json(CLAIMS), UnsupportedAlgorithmError),
        (_json({"alg": "HS256"}), _json(CLAIMS), UnknownKeyError),
        (_json({"alg": "HS256", "kid": "a"}), b"[1]", MalformedTokenError),
    ],
    ids=["duplicate", "jku", "none", "no-kid", "array-payload"],
)
def test_peek_is_as_strict_as_decode(
    header: bytes, payload: bytes, error: type[TokenError]
) -> None:
    with pytest.raises(error):
        peek(_token(header, payload))


def test_peek_enforces_size_cap() -> None:
    with pytest.raises(TokenTooLargeError):
        peek("a" * 101, max_bytes=100)
