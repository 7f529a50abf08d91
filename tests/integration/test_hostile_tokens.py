"""Hostile input through the real server: every answer is OK or a documented reason.

The domain-level suites (tests/unit, tests/vectors) cover the verifier exhaustively; these
send the same kind of input through gRPC, so the transport's error boundary is proven too:
no INTERNAL, no hang, no traceback text in a reply.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authsidecar.v1 import auth_pb2
from tests.support.jose import b64url as _b64
from tests.support.sidecar import RunningSidecar, reason_of
from tests.support.vectors import load_json

DOCUMENTED = {
    "TOKEN_MALFORMED",
    "TOKEN_TOO_LARGE",
    "ALGORITHM_NOT_ALLOWED",
    "KEY_UNKNOWN",
    "SIGNATURE_INVALID",
    "TOKEN_EXPIRED",
    "TOKEN_NOT_YET_VALID",
    "AUDIENCE_MISMATCH",
    "ISSUER_MISMATCH",
    "CLAIM_MISSING",
    "CLAIM_INVALID",
    "TOKEN_REVOKED",
    "WRONG_TOKEN_TYPE",
}


async def _verify_outcome(sc: RunningSidecar, token: str) -> tuple[grpc.StatusCode, str]:
    try:
        await sc.public.Verify(auth_pb2.VerifyRequest(token=token), timeout=5)
    except grpc.aio.AioRpcError as error:
        code, reason = reason_of(error)
        assert "Traceback" not in (error.details() or "")
        return code, reason
    return grpc.StatusCode.OK, ""


def _assert_refused(outcome: tuple[grpc.StatusCode, str]) -> None:
    code, reason = outcome
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        assert reason == "INVALID_REQUEST"
        return
    assert code is grpc.StatusCode.UNAUTHENTICATED, outcome
    assert reason in DOCUMENTED, outcome


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A loopback TCP listener that counts who connects: token headers must never reach it."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    yield server
    server.close()


def _connections(server: socket.socket) -> int:
    count = 0
    while True:
        try:
            conn, _ = server.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


async def test_no_token_header_makes_the_sidecar_fetch_read_or_choose(
    sidecar: RunningSidecar, listener: socket.socket, tmp_path: Path
) -> None:
    port = listener.getsockname()[1]
    url = f"http://127.0.0.1:{port}/jwks.json"
    secret_file = tmp_path / "secret.key"
    secret_file.write_bytes(b"s" * 64)
    own = sidecar.app.service.ring.signing_key
    assert own is not None
    claims = _b64(json.dumps({"sub": "x", "iss": "urn:authsidecar:local"}).encode())
    headers = [
        {"alg": "ES256", "kid": own.kid, "typ": "at+jwt", "jku": url},
        {"alg": "ES256", "kid": own.kid, "typ": "at+jwt", "x5u": url},
        {"alg": "ES256", "kid": own.kid, "typ": "at+jwt", "jwk": own.public_jwk()},
        {"alg": "HS256", "kid": str(secret_file), "typ": "at+jwt"},
        {"alg": "HS256", "kid": own.kid, "typ": "at+jwt"},
        {"alg": "none", "kid": own.kid, "typ": "at+jwt"},
        {"alg": "RS256", "kid": url, "typ": "at+jwt"},
    ]
    for header in headers:
        token = f"{_b64(json.dumps(header).encode())}.{claims}.{_b64(b'sig')}"
        _assert_refused(await _verify_outcome(sidecar, token))
    assert _connections(listener) == 0


async def test_every_wycheproof_token_is_refused_by_a_foreign_sidecar(
    sidecar: RunningSidecar,
) -> None:
    """None of these tokens was signed by this sidecar's key, so all must be refused, each
    with a documented reason: the vectors' hostile structures reach the transport intact."""
    cases = load_json("wycheproof/testvectors_v1/json_web_signature_test.json")
    tokens = [
        t["jws"] for g in cases["testGroups"] for t in g["tests"] if isinstance(t.get("jws"), str)
    ]
    assert len(tokens) > 300
    for token in tokens:
        _assert_refused(await _verify_outcome(sidecar, token))


hostile_text = st.one_of(
    st.text(max_size=300),
    st.binary(max_size=300).map(lambda b: b.decode("latin-1")),
    st.lists(st.text(alphabet="ABCabc012-_=+/.", max_size=40), min_size=1, max_size=5).map(
        ".".join
    ),
)


@st.composite
def forged_tokens(draw: st.DrawFn) -> str:
    header = draw(
        st.dictionaries(
            st.sampled_from(["alg", "kid", "typ", "crit", "jku", "b64", "x"]),
            st.one_of(st.text(max_size=20), st.integers(), st.none(), st.booleans()),
            max_size=4,
        )
    )
    claims = draw(
        st.dictionaries(
            st.sampled_from(["iss", "sub", "aud", "exp", "nbf", "iat", "jti", "scope"]),
            st.one_of(
                st.text(max_size=20), st.integers(), st.floats(), st.lists(st.text(max_size=5))
            ),
            max_size=8,
        )
    )
    sig = draw(st.binary(max_size=80))
    h = _b64(json.dumps(header).encode())
    c = _b64(json.dumps(claims).encode())
    return f"{h}.{c}.{_b64(sig)}"


@pytest.fixture
async def shared(sidecar: RunningSidecar) -> AsyncIterator[RunningSidecar]:
    yield sidecar


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(token=st.one_of(hostile_text, forged_tokens()))
async def test_verify_answers_arbitrary_input_with_a_documented_reason(
    shared: RunningSidecar, token: str
) -> None:
    _assert_refused(await _verify_outcome(shared, token))


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    claims=st.dictionaries(
        st.sampled_from(["iss", "sub", "aud", "exp", "nbf", "iat", "jti", "scope", "sid"]),
        st.one_of(
            st.text(max_size=10),
            st.integers(min_value=-(2**70), max_value=2**70),
            st.floats(allow_nan=False, allow_infinity=False),
            st.booleans(),
            st.none(),
            st.lists(st.text(max_size=5), max_size=3),
        ),
        max_size=9,
    )
)
async def test_signed_tokens_with_hostile_claims_are_ok_or_documented(
    shared: RunningSidecar, claims: dict[str, object]
) -> None:
    """Correctly signed by the sidecar's own key, so only the claim rules can refuse them."""
    key = shared.app.service.ring.signing_key
    assert key is not None
    # Signed as written: encode_jws would refuse to issue some of these (numbers beyond
    # I-JSON's range), but a token from elsewhere may carry them.
    header = _b64(json.dumps({"alg": key.alg, "kid": key.kid, "typ": "at+jwt"}).encode())
    signing_input = f"{header}.{_b64(json.dumps(claims).encode())}"
    token = f"{signing_input}.{_b64(key.sign(signing_input.encode('ascii')))}"
    code, reason = await _verify_outcome(shared, token)
    if code is not grpc.StatusCode.OK:
        _assert_refused((code, reason))
    if _beyond_i_json(claims):
        assert reason == "CLAIM_INVALID"


def _beyond_i_json(value: object) -> bool:
    """An integer a double does not hold exactly, anywhere (RFC 7493 section 2.2)."""
    if isinstance(value, dict):
        return any(_beyond_i_json(v) for v in value.values())
    if isinstance(value, list):
        return any(_beyond_i_json(v) for v in value)
    return type(value) is int and abs(value) > 2**53 - 1
