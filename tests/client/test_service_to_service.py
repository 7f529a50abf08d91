"""Service A (client interceptor) calls service B (server interceptor) through the sidecar.

Every case runs sync and asyncio; each outcome is the status and ErrorInfo reason documented
in clients/README.md.
"""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2

from authsidecar.client import AuthPolicy, StaticTokenSource
from authsidecar.v1 import auth_pb2
from tests.client.harness import OK, PERMISSION_DENIED, UNAUTHENTICATED, call_b, service_b
from tests.client.tokens import expire, mint
from tests.support.marks import AIO
from tests.support.sidecar import RunningSidecar

KIND = pytest.mark.parametrize("name", ["Whoami", "Count", "Sum", "Chat"])
EXPECTED = {
    "Whoami": [b"alice"],
    "Count": [b"alice:0", b"alice:1"],
    "Sum": [b"alice:2"],
    "Chat": [b"alice:2"],
}
POLICY = AuthPolicy(audience="svc-b", default_scopes=("read",))


@AIO
@KIND
async def test_valid_token_reaches_the_handler_as_current_claims(
    sidecar: RunningSidecar, aio: bool, name: str
) -> None:
    token = await mint(sidecar)
    async with service_b(aio, sidecar.unix_target, POLICY) as b:
        outcome = await call_b(aio, b, StaticTokenSource(token), name)
    assert (outcome.code, outcome.reason, outcome.messages) == (OK, "", EXPECTED[name])


@AIO
@KIND
async def test_missing_token_is_unauthenticated(
    sidecar: RunningSidecar, aio: bool, name: str
) -> None:
    async with service_b(aio, sidecar.unix_target, POLICY) as b:
        outcome = await call_b(aio, b, None, name)
    assert (outcome.code, outcome.reason, outcome.messages) == (
        UNAUTHENTICATED,
        "TOKEN_MISSING",
        [],
    )


@AIO
@KIND
async def test_expired_token_is_unauthenticated_token_expired(
    sidecar: RunningSidecar, aio: bool, name: str
) -> None:
    token = await mint(sidecar)
    expire(sidecar)
    async with service_b(aio, sidecar.unix_target, POLICY) as b:
        outcome = await call_b(aio, b, StaticTokenSource(token), name)
    assert (outcome.code, outcome.reason) == (UNAUTHENTICATED, "TOKEN_EXPIRED")


@AIO
async def test_revoked_token_is_unauthenticated_token_revoked(
    sidecar: RunningSidecar, aio: bool
) -> None:
    token = await mint(sidecar)
    await sidecar.public.Revoke(auth_pb2.RevokeRequest(token=token))
    async with service_b(aio, sidecar.unix_target, POLICY) as b:
        outcome = await call_b(aio, b, StaticTokenSource(token), "Whoami")
    assert (outcome.code, outcome.reason) == (UNAUTHENTICATED, "TOKEN_REVOKED")


@AIO
async def test_token_for_another_audience_is_audience_mismatch(
    sidecar: RunningSidecar, aio: bool
) -> None:
    token = await mint(sidecar, aud=("svc-a",))
    async with service_b(aio, sidecar.unix_target, POLICY) as b:
        outcome = await call_b(aio, b, StaticTokenSource(token), "Whoami")
    assert (outcome.code, outcome.reason) == (UNAUTHENTICATED, "AUDIENCE_MISMATCH")


@AIO
async def test_garbage_token_is_unauthenticated_token_malformed(
    sidecar: RunningSidecar, aio: bool
) -> None:
    async with service_b(aio, sidecar.unix_target, POLICY) as b:
        outcome = await call_b(aio, b, StaticTokenSource("not-a-jwt"), "Whoami")
    assert (outcome.code, outcome.reason) == (UNAUTHENTICATED, "TOKEN_MALFORMED")


@AIO
async def test_method_scope_missing_is_permission_denied(
    sidecar: RunningSidecar, aio: bool
) -> None:
    token = await mint(sidecar, scope="read")
    policy = AuthPolicy(audience="svc-b", method_scopes={"/demo.Echo/Sum": ("write",)})
    async with service_b(aio, sidecar.unix_target, policy) as b:
        denied = await call_b(aio, b, StaticTokenSource(token), "Sum")
        allowed = await call_b(aio, b, StaticTokenSource(token), "Whoami")
    assert (denied.code, denied.reason) == (PERMISSION_DENIED, "SCOPE_MISSING")
    assert allowed.code == OK


@AIO
async def test_public_methods_and_health_need_no_token(sidecar: RunningSidecar, aio: bool) -> None:
    policy = AuthPolicy(audience="svc-b", public_methods=("/demo.Echo/Public",))
    async with service_b(aio, sidecar.unix_target, policy) as b:
        public = await call_b(aio, b, None, "Public")
        async with grpc.aio.insecure_channel(b) as channel:
            check = channel.unary_unary(
                "/grpc.health.v1.Health/Check",
                request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                response_deserializer=health_pb2.HealthCheckResponse.FromString,
            )
            probe = await check(health_pb2.HealthCheckRequest())
    assert (public.code, public.messages) == (OK, [b"anonymous"])
    assert probe.status == health_pb2.HealthCheckResponse.SERVING
