"""Claim rules for a signature-verified token (RFC 7519 section 4.1, RFC 9068, RFC 8725).

Our own rules, not python-jose's: its `int()` coercion lets `"1700000000"` and `true` pass as
times, `exp == now` is accepted, a future `iat` is accepted and nothing is required
(../shared/SECURITY.md). Here every time is a real finite number, every string claim a
string, and the order of checks is fixed so a token always gets the same reason code.

The rules come in two parts, because the verifier caches the first (tokens/verifier.py):

* `check_static`, a function of the token and the policy alone:
  typ -> required -> time types -> lifetime -> iss -> the policy's aud -> sub, jti, scope,
  client_id, sid types;
* `check_window`, the time window against the clock: exp -> nbf -> iat, on the values
  `check_static` validated (the verifier keeps them with a cached result).

Before either, the claim set was parsed as a strict JSON object with I-JSON numbers
(sidecar/strict_json.py: TOKEN_MALFORMED, or CLAIM_INVALID for a number out of range).
`validate` runs both parts and the per-call audience, in the verifier's order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sidecar.errors import (
    AudienceMismatchError,
    ClaimError,
    ConfigError,
    ExpiredTokenError,
    IssuerMismatchError,
    NotYetValidError,
    WrongTokenTypeError,
)
from sidecar.tokens.model import Claims, TokenKind

__all__ = [
    "DEFAULT_REQUIRED_CLAIMS",
    "EXTERNAL_ACCESS_TYPS",
    "MAX_NUMERIC_DATE",
    "ClaimsPolicy",
    "TimeWindow",
]

DEFAULT_REQUIRED_CLAIMS = frozenset({"iss", "sub", "aud", "exp", "iat", "jti"})
# 9999-12-31T23:59:59Z. NumericDate (RFC 7519 section 2) has no upper bound, but ours go into
# int64 proto fields and float arithmetic: anything outside [0, this] is refused, not wrapped.
MAX_NUMERIC_DATE = 253_402_300_799
# What an external IdP's access tokens carry as `typ` (compared lower-cased, RFC 7515
# section 4.1.9): RFC 9068's at+jwt, the generic JWT, or nothing. Refresh tokens (rt+jwt),
# logout tokens, DPoP proofs and the like stay out.
EXTERNAL_ACCESS_TYPS: frozenset[str | None] = frozenset(
    {None, "jwt", "application/jwt", "at+jwt", "application/at+jwt"}
)
# `exp`, `iat`, `nbf` as the token sent them (None: absent), once validated as NumericDates.
TimeWindow = tuple[int | float | None, int | float | None, int | float | None]
# Without these a policy could not enforce what SECURITY.md makes mandatory.
_ALWAYS_REQUIRED = frozenset({"iss", "exp"})


def _numeric_date(claims: Mapping[str, Any], name: str) -> int | float | None:
    """A NumericDate or None if absent; bool, str, null and non-finite values are refused."""
    value = claims.get(name)
    if value is None:
        if name in claims:  # present as JSON null
            raise ClaimError(name)
        return None
    kind = type(value)
    if kind is int:
        if not 0 <= value <= MAX_NUMERIC_DATE:
            raise ClaimError(name)
        return value  # type: ignore[no-any-return]
    if kind is float:
        if not (math.isfinite(value) and 0.0 <= value <= MAX_NUMERIC_DATE):
            raise ClaimError(name)
        return value  # type: ignore[no-any-return]
    raise ClaimError(name)  # bool is not int here (type() is exact), nor are str, list...


def _media_type(typ: str) -> str:
    """RFC 7515 section 4.1.9: `typ` is a media type, compared case-insensitively (RFC 2045
    section 5.1), with "application/" implied when the value holds no '/'."""
    lowered = typ.lower()
    return lowered if "/" in lowered else "application/" + lowered


def _typ_matches(typ: object, kind: TokenKind) -> bool:
    """Our own tokens: `at+jwt` or `rt+jwt` as a media type. RFC 9068 section 4 asks a
    resource server to accept `at+jwt` and `application/at+jwt`; the same spellings of
    `rt+jwt` are the refresh token's. Never one kind for the other (RFC 8725 section 3.11)."""
    if type(typ) is not str:
        return False
    return typ == kind.typ or _media_type(typ) == kind.media_type


def _floor(value: int | float | None) -> int:
    """Claims carry integer seconds; an absent time is 0."""
    if value is None:
        return 0
    return value if type(value) is int else math.floor(value)


def _optional_str(claims: Mapping[str, Any], name: str, *, non_empty: bool = False) -> str:
    value = claims.get(name, "")
    if type(value) is not str or (non_empty and name in claims and not value):
        raise ClaimError(name)
    return value


def _audiences(value: object) -> tuple[str, ...]:
    """RFC 7519 section 4.1.3: a string or an array of strings (non-empty ones, here)."""
    if type(value) is str:
        if value:
            return (value,)
    elif type(value) is list and value:
        for item in value:  # a loop, not all(<generator>): half the cost (issue 7)
            if type(item) is not str or not item:
                raise ClaimError("aud")
        return tuple(value)
    raise ClaimError("aud")


@dataclass(frozen=True)
class ClaimsPolicy:
    """What a verifier accepts. Built once from configuration; `validate` is the hot path.

    `audiences`: when non-empty, a token's `aud` must contain at least one of them.
    `max_lifetime_s`: `exp - iat` may not exceed it, so a leaked signing key or a buggy issuer
    cannot mint tokens that live for years.
    """

    issuer: str
    audiences: tuple[str, ...] = ()
    leeway_s: int = 30
    max_lifetime_s: int = 86400
    required: frozenset[str] = field(default=DEFAULT_REQUIRED_CLAIMS)
    # None: the header `typ` must be exactly the kind's (our own tokens). Otherwise the
    # accepted `typ` values, lower-cased, None standing for an absent `typ` (external
    # issuers: EXTERNAL_ACCESS_TYPS).
    accepted_typs: frozenset[str | None] | None = None
    # `audiences` as a set, for one C-level `isdisjoint` per token (derived, not configured).
    _audience_set: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if type(self.issuer) is not str or not self.issuer:
            raise ConfigError("claims policy: issuer must be a non-empty string")
        if not all(type(a) is str and a for a in self.audiences):
            raise ConfigError("claims policy: audiences must be non-empty strings")
        if type(self.leeway_s) is not int or not 0 <= self.leeway_s <= 3600:
            raise ConfigError("claims policy: leeway_s must be an integer in [0, 3600]")
        if type(self.max_lifetime_s) is not int or self.max_lifetime_s <= 0:
            raise ConfigError("claims policy: max_lifetime_s must be a positive integer")
        if not _ALWAYS_REQUIRED <= self.required:
            raise ConfigError("claims policy: required claims must include iss and exp")
        object.__setattr__(self, "_audience_set", frozenset(self.audiences))

    def check_window(self, window: TimeWindow, now: float) -> None:
        """The time window against `now` with the leeway, on `exp`, `iat`, `nbf` as sent (not
        the floored `Claims` fields) and as `check_static` validated them. Run by the
        verifier on every call, cached or not, with the same values."""
        exp, iat, nbf = window
        leeway = self.leeway_s
        # RFC 7519 section 4.1.4: the token must not be accepted "on or after" exp.
        if exp is not None and now >= exp + leeway:
            raise ExpiredTokenError
        if nbf is not None and nbf > now + leeway:
            raise NotYetValidError
        if iat is not None and iat > now + leeway:  # issued in the future: clock skew or forgery
            raise NotYetValidError

    def check_times(self, claims: Mapping[str, Any], now: float) -> TimeWindow:
        """`exp`, `iat`, `nbf` validated as NumericDates, then `check_window`; returns them."""
        window = (_numeric_date(claims, "exp"), _numeric_date(claims, "iat"),
                  _numeric_date(claims, "nbf"))  # fmt: skip
        self.check_window(window, now)
        return window

    def check_static(
        self, header: Mapping[str, Any], claims: Mapping[str, Any], *, kind: TokenKind
    ) -> tuple[Claims, TimeWindow]:
        """Every rule that depends only on the token and this policy; return the claims typed
        and their time window as sent (for `check_window`).

        Raises only `TokenError` subclasses for any `claims` that came out of
        `strict_json.parse_claims`.
        """
        # RFC 8725 section 3.11 / RFC 9068 section 4: explicit typing keeps a refresh token
        # out of places that expect an access token. A missing typ is a wrong typ.
        typ = header.get("typ")
        accepted = self.accepted_typs
        if accepted is None:
            if not _typ_matches(typ, kind):
                raise WrongTokenTypeError
        elif (typ.lower() if type(typ) is str else typ) not in accepted:
            raise WrongTokenTypeError

        if not claims.keys() >= self.required:
            missing = min(name for name in self.required if name not in claims)
            raise ClaimError(missing, missing=True)  # min: the same claim whatever the hash seed

        exp = _numeric_date(claims, "exp")
        iat = _numeric_date(claims, "iat")
        nbf = _numeric_date(claims, "nbf")
        if exp is not None and iat is not None and exp - iat > self.max_lifetime_s:
            raise ClaimError("exp")

        iss = claims.get("iss")
        if type(iss) is not str or iss != self.issuer:  # exact: no normalisation, no prefix
            raise IssuerMismatchError

        aud: tuple[str, ...] = ()
        if "aud" in claims:
            aud = _audiences(claims["aud"])
        if self.audiences and self._audience_set.isdisjoint(aud):
            raise AudienceMismatchError  # an absent aud matches nothing

        sub = _optional_str(claims, "sub", non_empty=True)
        jti = _optional_str(claims, "jti", non_empty=True)
        scope = _optional_str(claims, "scope")  # space-delimited (RFC 8693 section 4.2)
        client_id = _optional_str(claims, "client_id")
        sid = _optional_str(claims, "sid")

        typed = Claims(
            iss,
            sub,
            aud,
            _floor(exp),
            _floor(iat),
            _floor(nbf),
            jti,
            scope,
            client_id,
            sid,
            dict(claims),
        )
        return typed, (exp, iat, nbf)

    def validate(
        self,
        header: Mapping[str, Any],
        claims: Mapping[str, Any],
        *,
        kind: TokenKind,
        now: float,
        audience: str | None = None,
    ) -> Claims:
        """`check_static`, then `check_window`, then the per-call `audience` (when given, one
        of the token's `aud` values): the verifier's order, for callers without a cache."""
        checked, window = self.check_static(header, claims, kind=kind)
        self.check_window(window, now)
        if audience is not None and audience not in checked.aud:
            raise AudienceMismatchError
        return checked
