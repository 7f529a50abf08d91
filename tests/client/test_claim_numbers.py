"""Claims keep their JSON numbers' kinds through protobuf's Struct (issue 14).

A Struct carries every number as a double; the client turns whole, finite numbers back into
`int` (so `claims["exp"] == verified.exp` with the same type) and leaves the rest `float`.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from google.protobuf import json_format, struct_pb2
from hypothesis import given
from hypothesis import strategies as st

from authsidecar.client import AsyncAuthClient
from authsidecar.client._models import _claims, json_numbers
from tests.support.sidecar import RunningSidecar

EXTRA = {"level": 3, "ratio": 0.5, "nested": {"n": 2, "xs": [1, 2.5, -7]}, "big": 2**40}


async def test_verified_and_introspected_claims_have_int_timestamps_and_integers(
    sidecar: RunningSidecar,
) -> None:
    async with (
        AsyncAuthClient(sidecar.admin_target) as admin,
        AsyncAuthClient(sidecar.unix_target) as public,
    ):
        grant = await admin.issue("alice", ["svc-a"], claims=EXTRA)
        verified = await public.verify(grant.access_token)
        introspected = await public.introspect(grant.access_token)
    for claims in (verified.claims, introspected.claims):
        for name in ("exp", "iat", "nbf"):
            assert type(claims[name]) is int, name
        assert claims["exp"] == verified.exp
        assert {key: claims[key] for key in EXTRA} == EXTRA
        assert type(claims["level"]) is int and type(claims["ratio"]) is float
        nested = claims["nested"]
        assert isinstance(nested, dict)
        assert [type(x) for x in nested["xs"]] == [int, float, int]


def test_json_numbers_leaves_non_finite_and_fractional_floats_alone() -> None:
    converted = json_numbers({"a": [1.0, 1.5, math.inf], "b": True, "c": "1.0"})
    assert converted == {"a": [1, 1.5, math.inf], "b": True, "c": "1.0"}
    assert isinstance(converted, dict)
    assert [type(x) for x in converted["a"]] == [int, float, float]
    assert converted["b"] is True


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.text(max_size=8)
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(st.dictionaries(st.text(max_size=8), _JSON, max_size=8))
def test_claims_conversion_matches_json_format_then_json_numbers(values: dict[str, Any]) -> None:
    """The one-pass conversion of a reply's claims gives exactly what protobuf's own
    MessageToDict followed by `json_numbers` gives: same keys in the same order, same values,
    same types (int vs float vs bool) at every depth."""
    struct = struct_pb2.Struct()
    struct.update(values)
    reference = json_numbers(json_format.MessageToDict(struct))
    assert isinstance(reference, dict)
    converted = _claims(struct)
    assert list(converted.items()) == list(reference.items())
    assert _types(dict(converted)) == _types(reference)


def _types(value: object) -> object:
    if isinstance(value, dict):
        return {key: _types(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_types(item) for item in value]
    return type(value)


@pytest.mark.parametrize("number", [math.inf, -math.inf, math.nan])
def test_claims_conversion_refuses_non_finite_numbers_as_json_format_does(number: float) -> None:
    struct = struct_pb2.Struct()
    struct.fields["x"].number_value = number
    with pytest.raises(ValueError):
        json_format.MessageToDict(struct)
    with pytest.raises(ValueError):
        _claims(struct)


def test_claims_conversion_reads_an_unset_value_as_null_like_json_format() -> None:
    struct = struct_pb2.Struct()
    struct.fields["unset"].Clear()
    struct.fields["nested"].struct_value.fields["also"].Clear()
    assert json_format.MessageToDict(struct) == {"unset": None, "nested": {"also": None}}
    assert dict(_claims(struct)) == {"unset": None, "nested": {"also": None}}
