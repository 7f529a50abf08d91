"""Claims keep their JSON numbers' kinds through protobuf's Struct (issue 14).

A Struct carries every number as a double; the client turns whole, finite numbers back into
`int` (so `claims["exp"] == verified.exp` with the same type) and leaves the rest `float`.
"""

from __future__ import annotations

import math

from authsidecar.client import AsyncAuthClient
from authsidecar.client._models import json_numbers
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
