"""Properties of the Verify path: hostile input yields a `TokenError`, never anything else.

`decode_jws` followed by `ClaimsPolicy.validate` either returns or raises a `TokenError`
subclass (SECURITY.md check 7): arbitrary text and bytes, structurally valid tokens with
random headers and claims (signed with a real key or not), and mutations of good tokens.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any

from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from sidecar.clock import FixedClock
from sidecar.config import TokenSettings
from sidecar.errors import AuthSidecarError, TokenError
from sidecar.jwa import HEADER_NAMES as SUPPORTED_ALGS
from sidecar.keys.ring import KeyRing
from sidecar.store.memory import MemoryTokenStore
from sidecar.tokens.claims import EXTERNAL_ACCESS_TYPS, ClaimsPolicy
from sidecar.tokens.issuers import Issuer, Issuers
from sidecar.tokens.jws import decode_jws
from sidecar.tokens.model import TokenKind
from sidecar.tokens.service import TokenService
from sidecar.tokens.signing import encode_jws
from tests.support.issuers import FixedExternalKeys
from tests.support.keys import make_key

NOW = 1_700_000_000
ISSUER = "https://issuer.test"
POLICY = ClaimsPolicy(issuer=ISSUER, audiences=("orders",))
HMAC_RING = KeyRing([make_key("HS256", "hs"), make_key("HS512", "hs5")], signing_kid="hs")
ASYM_RING = KeyRing([make_key("ES256", "es"), make_key("RS256", "rs")], signing_kid="es")
RINGS = (HMAC_RING, ASYM_RING)
PROPERTY_SETTINGS = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
header_names = st.sampled_from(
    ["alg", "kid", "typ", "crit", "b64", "cty", "jku", "jwk", "x5c", "zip"]
) | st.text(max_size=6)
alg_values = st.sampled_from(sorted(SUPPORTED_ALGS) + ["none", "None", "PS257", "Ed448", ""])
kid_values = st.sampled_from(["hs", "hs5", "es", "rs", "unknown", ""])
typ_values = st.sampled_from(["at+jwt", "rt+jwt", "JWT", ""])
claim_names = st.sampled_from(
    ["iss", "sub", "aud", "exp", "iat", "nbf", "jti", "scope", "client_id", "sid"]
) | st.text(max_size=6)
time_values = st.integers(min_value=NOW - 100_000, max_value=NOW + 100_000) | json_values
claim_values = (
    time_values | st.just(ISSUER) | st.just("orders") | st.just(["orders", "x"]) | json_values
)


@st.composite
def headers(draw: st.DrawFn) -> dict[str, Any]:
    header: dict[str, Any] = {}
    if draw(st.booleans()):
        header["alg"] = draw(alg_values | json_values)
    if draw(st.booleans()):
        header["kid"] = draw(kid_values | json_values)
    if draw(st.booleans()):
        header["typ"] = draw(typ_values | json_values)
    header.update(draw(st.dictionaries(header_names, json_values, max_size=2)))
    return header


@st.composite
def claim_sets(draw: st.DrawFn) -> dict[str, Any]:
    claims = {
        "iss": ISSUER,
        "sub": "alice",
        "aud": "orders",
        "exp": NOW + 300,
        "iat": NOW,
        "jti": "j",
    }
    claims.update(draw(st.dictionaries(claim_names, claim_values, max_size=4)))
    for name in draw(st.lists(st.sampled_from(sorted(claims)), max_size=2)):
        claims.pop(name, None)
    return claims


def _b64(raw: bytes) -> bytes:
    return base64.urlsafe_b64encode(raw).rstrip(b"=")


def _verify(token: str | bytes, ring: KeyRing) -> None:
    """The Verify path; returning or raising TokenError are the only allowed outcomes."""
    try:
        verified = decode_jws(token, ring)
        for kind in TokenKind:
            try:
                POLICY.validate(verified.header, verified.claims, kind=kind, now=NOW)
            except TokenError:
                pass
        POLICY.validate(
            verified.header, verified.claims, kind=TokenKind.ACCESS, now=NOW, audience="orders"
        )
    except TokenError:
        pass


@PROPERTY_SETTINGS
@given(st.text(max_size=300) | st.binary(max_size=300), st.sampled_from(RINGS))
def test_verify_arbitrary_input_raises_only_token_errors(token: str | bytes, ring: KeyRing) -> None:
    _verify(token, ring)


@PROPERTY_SETTINGS
@given(
    st.lists(
        st.text(alphabet="ABCDEFabcdef0123456789-_=+/ .", max_size=40), min_size=1, max_size=5
    ),
    st.sampled_from(RINGS),
)
def test_verify_dotted_base64ish_input_raises_only_token_errors(
    segments: list[str], ring: KeyRing
) -> None:
    _verify(".".join(segments), ring)


@PROPERTY_SETTINGS
@given(
    headers(),
    claim_sets() | json_values,
    st.sampled_from(RINGS),
    st.sampled_from(["hs", "hs5", "es", "rs", None]),
    st.booleans(),
)
def test_verify_hostile_structured_tokens_raise_only_token_errors(
    header: dict[str, Any], claims: Any, ring: KeyRing, signer: str | None, ascii_only: bool
) -> None:
    header_raw = json.dumps(header, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    payload_raw = json.dumps(claims, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    signing_input = _b64(header_raw) + b"." + _b64(payload_raw)
    key = (HMAC_RING.get(signer) or ASYM_RING.get(signer)) if signer else None
    signature = key.sign(signing_input) if key is not None else b"\x00" * 64
    _verify(signing_input + b"." + _b64(signature), ring)


@PROPERTY_SETTINGS
@given(claim_sets(), st.sampled_from(["hs", "es"]), typ_values)
def test_verify_well_signed_tokens_with_random_claims_raise_only_token_errors(
    claims: dict[str, Any], kid: str, typ: str
) -> None:
    ring = HMAC_RING if kid == "hs" else ASYM_RING
    key = ring.get(kid)
    assert key is not None
    try:
        token = encode_jws(claims, key, typ=typ or "at+jwt")
    except Exception:  # noqa: BLE001 - unissuable claims (NaN, ...) are out of scope here
        return
    _verify(token, ring)


@PROPERTY_SETTINGS
@given(
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=10_000), st.binary(min_size=0, max_size=3)),
        min_size=1,
        max_size=4,
    ),
    st.sampled_from(["hs", "es", "rs"]),
)
def test_verify_mutated_good_tokens_raise_only_token_errors(
    edits: list[tuple[int, bytes]], kid: str
) -> None:
    ring = HMAC_RING if kid == "hs" else ASYM_RING
    key = ring.get(kid)
    assert key is not None
    claims = {"iss": ISSUER, "sub": "a", "aud": "orders", "exp": NOW + 60, "iat": NOW, "jti": "j"}
    token = bytearray(encode_jws(claims, key, typ="at+jwt").encode("ascii"))
    for position, replacement in edits:
        at = position % (len(token) + 1)
        token[at : at + 1] = replacement  # replace, delete or insert around `at`
    _verify(bytes(token), ring)


@PROPERTY_SETTINGS
@given(
    st.dictionaries(st.text(max_size=5), json_values, max_size=4),
    claim_sets() | st.dictionaries(claim_names, json_values, max_size=8),
    st.sampled_from(list(TokenKind)),
    st.floats(min_value=0, max_value=2e9) | st.integers(min_value=0, max_value=2_000_000_000),
    st.none() | st.text(max_size=8),
)
def test_validate_raises_only_token_errors_for_any_json_claims(
    header: dict[str, Any],
    claims: dict[str, Any],
    kind: TokenKind,
    now: float,
    audience: str | None,
) -> None:
    try:
        POLICY.validate(header, claims, kind=kind, now=now, audience=audience)
    except TokenError:
        pass


# --- the reason does not depend on which external issuers are configured (issue 12) ------

EXTERNAL = "https://idp.test"
# The external issuer's keys: one under a kid of ours ("es": kids are per issuer).
EXTERNAL_RING = KeyRing(
    [make_key("ES256", "ext"), dataclasses.replace(make_key("ES256", "ext-es"), kid="es")],
    signing_kid="ext",
)


def _service(with_issuers: bool) -> TokenService:
    policy = ClaimsPolicy(
        issuer=EXTERNAL, audiences=("orders",), accepted_typs=EXTERNAL_ACCESS_TYPS
    )
    issuers = Issuers(ISSUER, [Issuer(EXTERNAL, FixedExternalKeys(EXTERNAL_RING), policy)])
    return TokenService(
        ring=ASYM_RING,
        store=MemoryTokenStore(),
        settings=TokenSettings(issuer=ISSUER, audiences=("orders",)).options(),
        clock=FixedClock(float(NOW)),
        issuers=issuers if with_issuers else None,
    )


WITHOUT_ISSUERS, WITH_ISSUERS = _service(False), _service(True)
iss_values = (
    st.sampled_from([ISSUER, EXTERNAL, EXTERNAL.upper(), EXTERNAL + "/", "https://other.test", ""])
    | json_values
)


def _reason(service: TokenService, token: str) -> str:
    try:
        service.verify(token)
    except AuthSidecarError as error:
        return error.reason
    return "OK"


_KID_ALG = {"es": "ES256", "rs": "RS256", "ext": "ES256", "ghost": "ES256"}
_SIGNER_BY_KID = {"es": "es", "rs": "rs", "ext": "ext", "ghost": "ext"}


@st.composite
def routed_tokens(draw: st.DrawFn) -> tuple[str, Any]:
    """(token, claims): mostly well formed and signed by the key its kid names at one of the
    issuers, so the examples reach the key, signature and claim steps; hostile otherwise."""
    kid = draw(st.sampled_from(["es", "es", "es", "rs", "ext", "ghost"]))  # ours, mostly
    if draw(st.integers(0, 4)):
        header: dict[str, Any] = {
            "alg": _KID_ALG[kid] if draw(st.integers(0, 5)) else "HS256",
            "kid": kid,
            "typ": draw(st.sampled_from(["at+jwt", "application/at+jwt", "JWT", "rt+jwt"])),
        }
    else:
        header = draw(headers())
    claims: Any = draw(claim_sets()) if draw(st.integers(0, 4)) else draw(json_values)
    iss = draw(st.none() | iss_values)
    if isinstance(claims, dict) and iss is not None:
        claims["iss"] = iss
    payload_raw = json.dumps(claims).encode("utf-8", "surrogatepass")
    if not draw(st.integers(0, 9)):  # bytes no JSON encoder writes: a duplicate iss, big number
        claims = None
        payload_raw = b'{"iss":"' + EXTERNAL.encode() + b'","iss":1,"n":' + b"9" * 40 + b"}"
    header_raw = json.dumps(header).encode("utf-8", "surrogatepass")
    signing_input = _b64(header_raw) + b"." + _b64(payload_raw)
    signer = draw(st.sampled_from([_SIGNER_BY_KID[kid], "es", "ext", "their-es", None]))
    keys = {"es": ASYM_RING.get("es"), "rs": ASYM_RING.get("rs"), "ext": EXTERNAL_RING.get("ext"),
            "their-es": EXTERNAL_RING.get("es")}  # fmt: skip
    key = keys[signer] if signer else None
    signature = key.sign(signing_input) if key is not None else b"\x00" * 64
    return (signing_input + b"." + _b64(signature)).decode("ascii"), claims


@PROPERTY_SETTINGS
@given(routed_tokens())
def test_reason_does_not_depend_on_external_issuers_unless_iss_names_one(
    token_and_claims: tuple[str, Any],
) -> None:
    token, claims = token_and_claims
    assume(not (isinstance(claims, dict) and claims.get("iss") == EXTERNAL))
    reason = _reason(WITHOUT_ISSUERS, token)
    event(reason)  # --hypothesis-show-statistics: which steps the examples reach
    assert _reason(WITH_ISSUERS, token) == reason
