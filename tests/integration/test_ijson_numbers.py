"""Numbers outside I-JSON's range in a validly signed token (issue 13, finding 3).

A 400-digit integer cannot go into a protobuf Struct (it was INTERNAL for Verify and
Introspect and failed a whole VerifyBatch). The verifier now refuses any claim set holding a
number outside RFC 7493 section 2.2's range (sidecar/strict_json.py) as CLAIM_INVALID, so
every RPC answers as it does for any other refused token: Verify and Refresh
UNAUTHENTICATED / CLAIM_INVALID, the VerifyBatch item alone, Introspect `active: false`,
Revoke OK with nothing revoked (RFC 7009), ext_authz a 401. The tokens are signed by the
sidecar's own key, so only this rule can refuse them.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from authsidecar.v1 import auth_pb2
from sidecar.keys.material import KeyMaterial
from tests.support.jose import b64url as _b64
from tests.support.sidecar import RunningSidecar, reason_of, running_sidecar

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from envoy_data_plane.envoy.service.auth.v3 import (
        AttributeContext,
        AttributeContextHttpRequest,
        AttributeContextRequest,
        CheckRequest,
        CheckResponse,
    )

OUT_OF_RANGE = {
    "400 digits": b"9" * 400,
    "2**53": b"9007199254740992",
    "-2**63": b"-9223372036854775808",
    "1e400": b"1e400",
    "-1.5E+309": b"-1.5E+309",
    "nested": b'{"deep":[1,{"x":' + b"1" * 30 + b"}]}",
}


@pytest.fixture
async def sidecar(data_dir: Path) -> AsyncIterator[RunningSidecar]:
    async with running_sidecar(
        data_dir, tokens={"audiences": ["svc-a"]}, envoy={"enabled": True}
    ) as running:
        yield running


def _signed(sc: RunningSidecar, *, number: bytes, typ: str = "at+jwt", jti: str = "j-n") -> str:
    """A token our key signs, whose claim `n` is `number` exactly as written."""
    key: KeyMaterial | None = sc.app.service.ring.signing_key
    assert key is not None
    now = int(sc.clock.now())
    issuer = sc.settings.tokens.issuer
    claims = {
        "iss": issuer,
        "sub": "alice",
        "aud": ["svc-a"] if typ == "at+jwt" else issuer,
        "iat": now,
        "exp": now + 300,
        "jti": jti,
        "sid": "fam-n",
    }
    payload = json.dumps(claims, separators=(",", ":")).encode()[:-1] + b',"n":' + number + b"}"
    header = json.dumps({"alg": key.alg, "kid": key.kid, "typ": typ}).encode()
    signing_input = f"{_b64(header)}.{_b64(payload)}"
    return f"{signing_input}.{_b64(key.sign(signing_input.encode('ascii')))}"


async def _refused(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return reason_of(caught.value)


@pytest.mark.parametrize("name", sorted(OUT_OF_RANGE))
async def test_every_rpc_refuses_a_number_outside_i_json_like_any_bad_claim(
    sidecar: RunningSidecar, name: str
) -> None:
    token = _signed(sidecar, number=OUT_OF_RANGE[name])
    unauthenticated = (grpc.StatusCode.UNAUTHENTICATED, "CLAIM_INVALID")

    verify = sidecar.public.Verify(auth_pb2.VerifyRequest(token=token))
    assert await _refused(verify) == unauthenticated

    good = (
        await sidecar.admin.Issue(auth_pb2.IssueRequest(subject="bob", audience=["svc-a"]))
    ).access_token
    batch = await sidecar.public.VerifyBatch(
        auth_pb2.VerifyBatchRequest(
            requests=[auth_pb2.VerifyRequest(token=t) for t in (good, token, good)]
        )
    )
    assert [r.WhichOneof("outcome") for r in batch.results] == ["ok", "error", "ok"]
    assert auth_pb2.ErrorReason.Name(batch.results[1].error) == "CLAIM_INVALID"
    assert batch.results[0].ok.sub == "bob"

    introspected = await sidecar.public.Introspect(auth_pb2.IntrospectRequest(token=token))
    assert introspected == auth_pb2.IntrospectResponse(active=False)

    refresh_token = _signed(sidecar, number=OUT_OF_RANGE[name], typ="rt+jwt")
    refresh = sidecar.public.Refresh(auth_pb2.RefreshRequest(refresh_token=refresh_token))
    assert await _refused(refresh) == unauthenticated

    await sidecar.public.Revoke(auth_pb2.RevokeRequest(token=token))
    await sidecar.public.Revoke(auth_pb2.RevokeRequest(token=refresh_token))
    assert len(sidecar.app.service.revocations) == 0  # refused, so nothing was revoked

    reply = await _check(sidecar, token)
    denied = reply.denied_response
    assert denied is not None and denied.status is not None and int(denied.status.code) == 401
    sent = {h.header.key: h.header.value for h in denied.headers if h.header is not None}
    assert sent["x-authsidecar-reason"] == "CLAIM_INVALID"


async def test_numbers_at_the_edge_of_the_range_are_accepted(sidecar: RunningSidecar) -> None:
    for number, value in ((b"9007199254740991", 2**53 - 1), (b"-1e308", -1e308)):
        response = await sidecar.public.Verify(
            auth_pb2.VerifyRequest(token=_signed(sidecar, number=number))
        )
        assert response.claims.fields["n"].number_value == value


async def _check(sc: RunningSidecar, token: str) -> CheckResponse:
    request = CheckRequest(
        attributes=AttributeContext(
            request=AttributeContextRequest(
                http=AttributeContextHttpRequest(headers={"authorization": f"Bearer {token}"})
            )
        )
    )
    async with grpc.aio.insecure_channel(sc.unix_target) as channel:
        check = channel.unary_unary(
            "/envoy.service.auth.v3.Authorization/Check",
            request_serializer=lambda data: data,
            response_deserializer=lambda data: data,
        )
        raw = await check(bytes(request), timeout=10)
    return CheckResponse.parse(raw)
