"""Verify and VerifyBatch responses are byte for byte what `Struct.update` made (issue 7).

`fill_struct` replaces `Struct.update` for the claims. upb writes map entries in its hash
table's order, which depends on the process and on how the map was built, so these tests
build both in this process and compare the serialisations, not just the values.
"""

from __future__ import annotations

import enum
import json
from typing import Any

import pytest
from google.protobuf import struct_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authsidecar.v1 import auth_pb2
from sidecar.errors import AuthSidecarError, ExpiredTokenError
from sidecar.tokens.cache import VerifyCache
from sidecar.tokens.model import Claims, TokenKind, VerifiedToken
from sidecar.transport.responses import (
    MAX_MEMO_ENTRIES,
    ResponseMemo,
    batch_response,
    memo_size,
    verify_response,
)
from sidecar.transport.structs import fill_struct
from tests.support.keys import make_key

BASE = {
    "iss": "urn:authsidecar:test",
    "sub": "bench-user",
    "aud": ["svc"],
    "exp": 1_795_436_663,
    "iat": 1_795_433_063,
    "nbf": 1_795_433_063,
    "jti": "RvFROi9Tv-WdRTgrznNf9w",
    "scope": "read write",
    "client_id": "bench",
}


class _Level(enum.IntEnum):
    HIGH = 3


class _Name(str):
    pass


CASES: dict[str, dict[str, Any]] = {
    "typical access token": BASE,
    "empty": {},
    "ints": {"zero": 0, "neg": -7, "big": 2**53 + 1, "max": 2**63 - 1, "min": -(2**63)},
    "floats": {"f": 1.5, "tiny": 5e-324, "neg0": -0.0, "huge": 1.7976931348623157e308},
    "bools and null": {"t": True, "f": False, "n": None},
    "nested": {"act": {"sub": "svc-a", "act": {"sub": "svc-b", "n": [1, {"x": None}]}}},
    "empty containers": {"d": {}, "l": [], "ld": [{}], "ll": [[]]},
    "lists of everything": {"l": [1, 2.5, "s", True, None, {"a": [1]}, []]},
    "unicode": {"name": "Zoë ✓ 😀", "日本": "語", "": "empty name", "esc": '"\\/\n\t'},
    "many members": {f"claim_{i}": i for i in range(40)},
    "non-JSON types, as update converts them": {
        "tuple": (1, "a"),
        "intenum": _Level.HIGH,
        "str subclass": _Name("x"),
        "list of tuples": [(1, 2), _Level.HIGH],
    },
}


def _updated(values: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


def _filled(values: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    fill_struct(struct, values)
    return struct


def _verified(values: dict[str, Any]) -> VerifiedToken:
    claims = Claims(
        "urn:authsidecar:test", "alice", ("svc", "b"), 2, 1, 0, "j", "read", "c", "", values
    )
    return VerifiedToken(TokenKind.ACCESS, "kid-1", claims)


def _reference_fill(response: auth_pb2.VerifyResponse, verified: VerifiedToken) -> None:
    """`_fill_verify_response` as it was before issue 7 (in place, `Struct.update`)."""
    claims = verified.claims
    response.sub = claims.sub
    response.iss = claims.iss
    response.aud.extend(claims.aud)
    response.exp = claims.exp
    response.iat = claims.iat
    response.nbf = claims.nbf
    response.jti = claims.jti
    response.scope = claims.scope
    response.client_id = claims.client_id
    response.kid = verified.kid
    response.claims.update(claims.all)


def _reference_response(verified: VerifiedToken) -> auth_pb2.VerifyResponse:
    response = auth_pb2.VerifyResponse()
    _reference_fill(response, verified)
    return response


@pytest.mark.parametrize("values", CASES.values(), ids=CASES.keys())
def test_fill_struct_serialises_as_struct_update(values: dict[str, Any]) -> None:
    assert _filled(values).SerializeToString() == _updated(values).SerializeToString()
    assert _filled(values) == _updated(values)


@pytest.mark.parametrize("values", CASES.values(), ids=CASES.keys())
def test_verify_response_serialises_as_before(values: dict[str, Any]) -> None:
    verified = _verified(values)
    built = verify_response(verified).SerializeToString()
    assert built == _reference_response(verified).SerializeToString()


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=25,
)


def _outcome(build: Any, values: dict[str, Any]) -> tuple[str, bytes | str]:
    try:
        return "built", build(values).SerializeToString()
    except Exception as error:  # noqa: BLE001 - both must fail alike (ints past 2^64 do)
        return "failed", type(error).__name__


@settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=12))
def test_fill_struct_serialises_as_struct_update_for_any_json_object(
    values: dict[str, Any],
) -> None:
    # As decoded by the strict parser: a JSON round trip gives exactly json's types.
    decoded = json.loads(json.dumps(values))
    assert _outcome(_filled, decoded) == _outcome(_updated, decoded)


def test_batch_response_serialises_as_before() -> None:
    outcomes: list[VerifiedToken | AuthSidecarError] = [
        _verified(values) for values in CASES.values()
    ]
    outcomes.insert(2, ExpiredTokenError())
    reference = auth_pb2.VerifyBatchResponse()
    for outcome in outcomes:
        item = reference.results.add()
        if isinstance(outcome, AuthSidecarError):
            item.error = auth_pb2.TOKEN_EXPIRED
        else:
            _reference_fill(item.ok, outcome)
    assert batch_response(outcomes).SerializeToString() == reference.SerializeToString()


def test_response_memo_answers_the_same_token_object_with_the_same_response() -> None:
    memo = ResponseMemo(4)
    a, b = _verified({"n": 1}), _verified({"n": 2})
    first_a, first_b = memo.response(a), memo.response(b)
    assert memo.response(a) is first_a and memo.response(b) is first_b
    assert first_a.SerializeToString() != first_b.SerializeToString()
    assert memo.response(_verified({"n": 1})) is not first_a  # equal, but not the same object


def test_response_memo_is_emptied_when_full_and_rebuilds_identically() -> None:
    memo = ResponseMemo(2)
    a, b, c = _verified({"n": 1}), _verified({"n": 2}), _verified({"n": 3})
    first_a = memo.response(a)
    memo.response(b)
    assert len(memo) == 2
    memo.response(c)  # full: emptied, then c stored
    assert len(memo) == 1
    rebuilt = memo.response(a)
    assert rebuilt is not first_a
    assert rebuilt.SerializeToString() == first_a.SerializeToString()
    assert memo.response(a) is rebuilt
    for n in range(50):
        memo.response(_verified({"n": n}))
        assert len(memo) <= 2


def test_response_memo_of_size_zero_stores_nothing() -> None:
    memo = ResponseMemo(0)
    a = _verified({"n": 1})
    assert memo.response(a) is not memo.response(a)
    assert len(memo) == 0


def test_response_memo_keeps_only_results_the_verify_cache_holds() -> None:
    # A result the cache does not hold never comes back: memoising it only kept it alive.
    key = make_key("HS256", "hs")
    cache = VerifyCache(max_entries=4, max_bytes=10**6)
    memo = ResponseMemo(4, holds=cache.holds)
    loose, held = _verified({"n": 1}), _verified({"n": 2})
    cache.put("t" * 100, held, key, issuer=None, window=(None, None, None))
    memo.response(loose)
    assert len(memo) == 0
    first = memo.response(held)
    assert len(memo) == 1 and memo.response(held) is first
    cache.discard("t" * 100)
    assert not cache.holds(held)
    memo.response(_verified({"n": 3}))
    assert len(memo) == 1


def test_response_memo_is_no_larger_than_the_verify_cache_and_off_with_it() -> None:
    """Only tokens the verify cache serves come back as the same object: a larger memo
    could never hit, and with the cache off (either bound 0) nothing could."""
    assert memo_size(7, 1 << 20) == 7
    assert memo_size(10 * MAX_MEMO_ENTRIES, 1 << 30) == MAX_MEMO_ENTRIES
    assert memo_size(0, 1 << 20) == 0
    assert memo_size(100, 0) == 0
