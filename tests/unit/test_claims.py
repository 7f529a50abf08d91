"""ClaimsPolicy: our own claim rules (../shared/SECURITY.md, check 6), each with its reason."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from sidecar.errors import (
    AudienceMismatchError,
    ClaimError,
    ConfigError,
    ExpiredTokenError,
    IssuerMismatchError,
    MalformedTokenError,
    NotYetValidError,
    WrongTokenTypeError,
)
from sidecar.keys.material import KeyMaterial
from sidecar.tokens.claims import MAX_NUMERIC_DATE, ClaimsPolicy
from sidecar.tokens.jws import decode_jws
from sidecar.tokens.model import Claims, TokenKind
from sidecar.tokens.signing import encode_jws
from tests.support.keys import make_key

NOW = 1_700_000_000
ISSUER = "https://issuer.test"
ACCESS_HEADER: dict[str, Any] = {"alg": "HS256", "kid": "k", "typ": "at+jwt"}
POLICY = ClaimsPolicy(issuer=ISSUER, audiences=("orders",), leeway_s=0)


def _claims(**overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "alice",
        "aud": "orders",
        "exp": NOW + 300,
        "iat": NOW,
        "jti": "j-1",
    }
    for name, value in overrides.items():
        if value is _ABSENT:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


_ABSENT = object()


def _validate(
    claims: dict[str, Any],
    *,
    policy: ClaimsPolicy = POLICY,
    header: dict[str, Any] | None = None,
    kind: TokenKind = TokenKind.ACCESS,
    now: float = NOW,
    audience: str | None = None,
) -> Claims:
    return policy.validate(
        ACCESS_HEADER if header is None else header,
        claims,
        kind=kind,
        now=now,
        audience=audience,
    )


# --- accepted -----------------------------------------------------------------------------


def test_validate_returns_typed_claims() -> None:
    raw = _claims(nbf=NOW - 10, scope="read write", client_id="svc", sid="fam", extra=[1])
    claims = _validate(raw)
    assert claims == Claims(
        iss=ISSUER,
        sub="alice",
        aud=("orders",),
        exp=NOW + 300,
        iat=NOW,
        nbf=NOW - 10,
        jti="j-1",
        scope="read write",
        client_id="svc",
        sid="fam",
        all=raw,
    )
    assert claims.scopes == {"read", "write"}
    assert claims.all is not raw


def test_validate_floors_fractional_times_to_ints() -> None:
    claims = _validate(_claims(exp=NOW + 60.9, iat=NOW - 0.5, nbf=NOW - 1.5))
    assert (claims.exp, claims.iat, claims.nbf) == (NOW + 60, NOW - 1, NOW - 2)
    assert all(type(t) is int for t in (claims.exp, claims.iat, claims.nbf))


def test_validate_defaults_absent_optional_claims() -> None:
    claims = _validate(_claims())
    assert (claims.nbf, claims.scope, claims.client_id, claims.sid) == (0, "", "", "")


def test_validate_accepts_refresh_token_where_refresh_is_expected() -> None:
    header = {**ACCESS_HEADER, "typ": "rt+jwt"}
    assert _validate(_claims(), header=header, kind=TokenKind.REFRESH).sub == "alice"


def test_validate_accepts_aud_list_with_one_accepted_audience() -> None:
    claims = _validate(_claims(aud=["billing", "orders"]), audience="billing")
    assert claims.aud == ("billing", "orders")


def test_validate_without_policy_audiences_accepts_any_aud() -> None:
    policy = ClaimsPolicy(issuer=ISSUER)
    assert _validate(_claims(aud="anything"), policy=policy).aud == ("anything",)


# --- typ ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("typ", "kind"),
    [
        ("rt+jwt", TokenKind.ACCESS),
        ("at+jwt", TokenKind.REFRESH),
        (_ABSENT, TokenKind.ACCESS),
        ("JWT", TokenKind.ACCESS),
        ("application/jwt", TokenKind.ACCESS),
        ("application/rt+jwt", TokenKind.ACCESS),
        ("APPLICATION/AT+JWT", TokenKind.REFRESH),
        ("text/at+jwt", TokenKind.ACCESS),
        ("application/at+jwt; charset=utf-8", TokenKind.ACCESS),
        (" at+jwt", TokenKind.ACCESS),
        ("at+jwt ", TokenKind.ACCESS),
        ("application/", TokenKind.ACCESS),
        ("", TokenKind.ACCESS),
        (None, TokenKind.ACCESS),
        (["at+jwt"], TokenKind.ACCESS),
    ],
    ids=[
        "refresh-as-access",
        "access-as-refresh",
        "missing",
        "jwt",
        "application-jwt",
        "refresh-media-type-as-access",
        "access-media-type-as-refresh",
        "other-top-level-type",
        "with-parameter",
        "leading-space",
        "trailing-space",
        "bare-prefix",
        "empty",
        "null",
        "list",
    ],
)
def test_validate_rejects_wrong_token_type(typ: object, kind: TokenKind) -> None:
    header = {"alg": "HS256", "kid": "k"}
    if typ is not _ABSENT:
        header["typ"] = typ  # type: ignore[assignment]
    with pytest.raises(WrongTokenTypeError) as info:
        _validate(_claims(), header=header, kind=kind)
    assert info.value.reason == "WRONG_TOKEN_TYPE"


@pytest.mark.parametrize(
    ("typ", "kind"),
    [
        ("at+jwt", TokenKind.ACCESS),
        ("application/at+jwt", TokenKind.ACCESS),
        ("AT+JWT", TokenKind.ACCESS),
        ("Application/At+Jwt", TokenKind.ACCESS),
        ("rt+jwt", TokenKind.REFRESH),
        ("application/rt+jwt", TokenKind.REFRESH),
        ("APPLICATION/RT+JWT", TokenKind.REFRESH),
    ],
)
def test_validate_accepts_typ_as_a_media_type_in_either_spelling(typ: str, kind: TokenKind) -> None:
    # RFC 9068 section 4: at+jwt and application/at+jwt; RFC 7515 section 4.1.9: "typ" is a
    # media type (case-insensitive per RFC 2045), "application/" implied without a '/'.
    claims = _claims(sid="fam") if kind is TokenKind.REFRESH else _claims()
    policy = POLICY if kind is TokenKind.ACCESS else ClaimsPolicy(issuer=ISSUER, leeway_s=0)
    header = {"alg": "HS256", "kid": "k", "typ": typ}
    assert _validate(claims, header=header, kind=kind, policy=policy).sub == "alice"
    assert TokenKind.from_typ(typ) is kind


# --- required -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["iss", "sub", "aud", "exp", "iat", "jti"])
def test_validate_rejects_missing_required_claim(name: str) -> None:
    with pytest.raises(ClaimError) as info:
        _validate(_claims(**{name: _ABSENT}))
    assert info.value.reason == "CLAIM_MISSING"
    assert info.value.claim == name


def test_validate_reports_the_same_missing_claim_whatever_the_hash_seed() -> None:
    with pytest.raises(ClaimError) as info:
        _validate({})
    assert info.value.claim == "aud"


def test_validate_allows_optional_sub_and_jti_when_policy_does_not_require_them() -> None:
    policy = ClaimsPolicy(issuer=ISSUER, required=frozenset({"iss", "exp"}))
    claims = _validate(_claims(sub=_ABSENT, jti=_ABSENT, aud=_ABSENT, iat=_ABSENT), policy=policy)
    assert (claims.sub, claims.jti, claims.aud, claims.iat) == ("", "", (), 0)


# --- times --------------------------------------------------------------------------------


BAD_TIMES: list[object] = [
    "1700000300",
    True,
    False,
    None,
    [],
    {},
    [NOW + 300],
    float("inf"),
    float("-inf"),
    float("nan"),
    10**400,
    -1,
    -0.5,
    MAX_NUMERIC_DATE + 1,
]
BAD_TIME_IDS = [
    "string",
    "true",
    "false",
    "null",
    "list",
    "object",
    "list-of-int",
    "inf",
    "minus-inf",
    "nan",
    "huge-int",
    "negative",
    "negative-float",
    "after-9999",
]


@pytest.mark.parametrize("name", ["exp", "iat", "nbf"])
@pytest.mark.parametrize("value", BAD_TIMES, ids=BAD_TIME_IDS)
def test_validate_rejects_time_claim_that_is_not_a_finite_number(name: str, value: object) -> None:
    with pytest.raises(ClaimError) as info:
        _validate(_claims(**{name: value}))
    assert info.value.reason == "CLAIM_INVALID"
    assert info.value.claim == name


@pytest.mark.parametrize(
    ("exp", "now", "leeway"),
    [(NOW, NOW, 0), (NOW - 1, NOW, 0), (NOW - 30, NOW, 30), (NOW + 0.5, NOW + 0.5, 0)],
    ids=["exp-equals-now", "past", "exp-plus-leeway-equals-now", "fractional"],
)
def test_validate_rejects_expired_token(exp: float, now: float, leeway: int) -> None:
    policy = dataclasses.replace(POLICY, leeway_s=leeway)
    with pytest.raises(ExpiredTokenError) as info:
        _validate(_claims(exp=exp, iat=NOW - 60), policy=policy, now=now)
    assert info.value.reason == "TOKEN_EXPIRED"


def test_validate_accepts_token_until_just_before_exp_plus_leeway() -> None:
    policy = dataclasses.replace(POLICY, leeway_s=30)
    assert _validate(_claims(exp=NOW), policy=policy, now=NOW + 29.999).exp == NOW


@pytest.mark.parametrize("name", ["nbf", "iat"])
def test_validate_rejects_token_from_the_future(name: str) -> None:
    with pytest.raises(NotYetValidError) as info:
        _validate(_claims(**{name: NOW + 1}))
    assert info.value.reason == "TOKEN_NOT_YET_VALID"


@pytest.mark.parametrize("name", ["nbf", "iat"])
def test_validate_accepts_future_time_within_leeway(name: str) -> None:
    policy = dataclasses.replace(POLICY, leeway_s=30)
    _validate(_claims(**{name: NOW + 30}), policy=policy)
    with pytest.raises(NotYetValidError):
        _validate(_claims(**{name: NOW + 31}), policy=policy)


def test_validate_rejects_lifetime_over_maximum() -> None:
    policy = dataclasses.replace(POLICY, max_lifetime_s=3600)
    _validate(_claims(iat=NOW, exp=NOW + 3600), policy=policy)
    with pytest.raises(ClaimError) as info:
        _validate(_claims(iat=NOW, exp=NOW + 3601), policy=policy)
    assert (info.value.claim, info.value.reason) == ("exp", "CLAIM_INVALID")


def test_validate_rejects_token_valid_until_year_9999() -> None:
    with pytest.raises(ClaimError):
        _validate(_claims(exp=MAX_NUMERIC_DATE))


# --- iss and aud --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "iss",
    [
        "https://issuer.test/",
        "HTTPS://issuer.test",
        "https://issuer.test.evil",
        "https://issuer",
        "",
        " https://issuer.test",
        ["https://issuer.test"],
        None,
        1,
    ],
)
def test_validate_rejects_issuer_not_exactly_equal(iss: object) -> None:
    with pytest.raises(IssuerMismatchError) as info:
        _validate(_claims(iss=iss))
    assert info.value.reason == "ISSUER_MISMATCH"


@pytest.mark.parametrize(
    "aud", ["", [], [""], [1], ["orders", 2], 1, None, True, {"orders": 1}, [["orders"]]]
)
def test_validate_rejects_aud_that_is_not_string_or_non_empty_string_list(aud: object) -> None:
    with pytest.raises(ClaimError) as info:
        _validate(_claims(aud=aud))
    assert (info.value.claim, info.value.reason) == ("aud", "CLAIM_INVALID")


@pytest.mark.parametrize("aud", ["billing", ["billing", "shipping"], "Orders", "orders "])
def test_validate_rejects_aud_without_accepted_audience(aud: object) -> None:
    with pytest.raises(AudienceMismatchError) as info:
        _validate(_claims(aud=aud))
    assert info.value.reason == "AUDIENCE_MISMATCH"


def test_validate_rejects_aud_not_containing_requested_audience() -> None:
    with pytest.raises(AudienceMismatchError):
        _validate(_claims(aud=["orders"]), audience="billing")
    with pytest.raises(AudienceMismatchError):
        _validate(_claims(aud=["orders"]), audience="")


def test_validate_rejects_missing_aud_when_an_audience_is_expected() -> None:
    policy = dataclasses.replace(POLICY, required=frozenset({"iss", "exp"}))
    with pytest.raises(AudienceMismatchError):
        _validate(_claims(aud=_ABSENT), policy=policy)
    with pytest.raises(AudienceMismatchError):
        _validate(
            _claims(aud=_ABSENT),
            policy=ClaimsPolicy(issuer=ISSUER, required=frozenset({"iss", "exp"})),
            audience="orders",
        )


# --- string claims ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("sub", ""),
        ("sub", 42),
        ("sub", None),
        ("sub", ["alice"]),
        ("jti", ""),
        ("jti", 7),
        ("scope", ["read", "write"]),
        ("scope", None),
        ("client_id", 1),
        ("client_id", {"id": "x"}),
        ("sid", 1.5),
        ("sid", False),
    ],
)
def test_validate_rejects_string_claim_of_wrong_type(name: str, value: object) -> None:
    with pytest.raises(ClaimError) as info:
        _validate(_claims(**{name: value}))
    assert (info.value.claim, info.value.reason) == (name, "CLAIM_INVALID")


# --- through the JWS layer ------------------------------------------------------------------


class _Keys:
    def __init__(self, key: KeyMaterial) -> None:
        self._key = key

    def get(self, kid: str) -> KeyMaterial | None:
        return self._key if kid == self._key.kid else None


@pytest.mark.parametrize(
    ("exp", "error"), [("1700000300", ClaimError), (True, ClaimError), (None, ClaimError)]
)
def test_verify_rejects_exp_of_wrong_json_type(exp: object, error: type[Exception]) -> None:
    key = make_key("HS256", "k")
    verified = decode_jws(encode_jws(_claims(exp=exp), key, typ="at+jwt"), _Keys(key))
    with pytest.raises(error):
        POLICY.validate(verified.header, verified.claims, kind=TokenKind.ACCESS, now=NOW)


@pytest.mark.parametrize(
    ("exp", "error"),
    [(b"NaN", MalformedTokenError), (b"Infinity", MalformedTokenError), (b"1e400", ClaimError)],
)
def test_verify_rejects_non_json_exp_as_malformed_and_out_of_range_exp_as_invalid(
    exp: bytes, error: type[Exception]
) -> None:
    # NaN and Infinity are not JSON; 1e400 is JSON a double cannot hold (RFC 7493 2.2).
    key = make_key("HS256", "k")
    token = encode_jws(_claims(exp=123456), key, typ="at+jwt")
    import base64

    payload = base64.urlsafe_b64decode(token.split(".")[1] + "==").replace(b"123456", exp)
    segment = base64.urlsafe_b64encode(payload).rstrip(b"=")
    header = token.split(".")[0].encode("ascii")
    signature = base64.urlsafe_b64encode(key.sign(header + b"." + segment)).rstrip(b"=")
    with pytest.raises(error) as info:
        decode_jws(header + b"." + segment + b"." + signature, _Keys(key))
    if error is ClaimError:
        assert (info.value.claim, info.value.reason) == ("exp", "CLAIM_INVALID")  # type: ignore[attr-defined]


# --- policy configuration -----------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"issuer": ""},
        {"issuer": ISSUER, "audiences": ("",)},
        {"issuer": ISSUER, "leeway_s": -1},
        {"issuer": ISSUER, "leeway_s": 1.5},
        {"issuer": ISSUER, "max_lifetime_s": 0},
        {"issuer": ISSUER, "required": frozenset({"exp"})},
        {"issuer": ISSUER, "required": frozenset({"iss"})},
    ],
)
def test_policy_refuses_unsafe_configuration(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        ClaimsPolicy(**kwargs)
