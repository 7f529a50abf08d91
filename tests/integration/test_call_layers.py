"""The call layers (transport/layers.py) reach every handler the servers register.

They replaced grpc.aio interceptors (issue 7: ~125 µs per call); these tests pin down that
nothing lost its layer in the move: unary and streaming handlers of every service on the
public and admin servers, and handlers registered only through a generic handler.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from authsidecar.v1 import auth_pb2
from sidecar.calls import current_call
from sidecar.transport.layers import LayeredServer
from tests.support.sidecar import RunningSidecar, reason_of

TOO_BIG = grpc.StatusCode.INVALID_ARGUMENT, "METADATA_TOO_LARGE"


def _padding(sidecar: RunningSidecar) -> tuple[tuple[str, str], ...]:
    return (("x-padding", "p" * (sidecar.settings.listen.max_metadata_bytes + 100)),)


async def _refusal(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return reason_of(caught.value)


async def test_unary_health_check_is_refused_over_the_metadata_limit(
    sidecar: RunningSidecar,
) -> None:
    health: Any = health_pb2_grpc.HealthStub(sidecar.channels[0])  # stubs untyped for aio
    ok = await health.Check(health_pb2.HealthCheckRequest())
    assert ok.status == health_pb2.HealthCheckResponse.SERVING
    call = health.Check(health_pb2.HealthCheckRequest(), metadata=_padding(sidecar))
    assert await _refusal(call) == TOO_BIG


async def test_streaming_health_watch_is_refused_over_the_metadata_limit(
    sidecar: RunningSidecar,
) -> None:
    health: Any = health_pb2_grpc.HealthStub(sidecar.channels[0])  # stubs untyped for aio
    watch = health.Watch(health_pb2.HealthCheckRequest(), metadata=_padding(sidecar))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in watch:
            pass
    assert reason_of(caught.value) == TOO_BIG
    # Within the limit the stream works: its first message is the current status.
    fine = health.Watch(health_pb2.HealthCheckRequest())
    first = await fine.read()
    assert first.status == health_pb2.HealthCheckResponse.SERVING
    fine.cancel()


async def test_bidi_reflection_is_refused_over_the_metadata_limit(sidecar: RunningSidecar) -> None:
    admin: Any = sidecar.channels[2]  # the stubs' types expect a sync channel
    stub: Any = reflection_pb2_grpc.ServerReflectionStub(admin)
    ask = reflection_pb2.ServerReflectionRequest(list_services="")
    answer = stub.ServerReflectionInfo(iter([ask]))
    services = [s.name async for r in answer for s in r.list_services_response.service]
    assert "authsidecar.v1.AuthService" in services
    refused = stub.ServerReflectionInfo(iter([ask]), metadata=_padding(sidecar))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in refused:
            pass
    assert reason_of(caught.value) == TOO_BIG


async def test_admin_issue_is_refused_over_the_metadata_limit(sidecar: RunningSidecar) -> None:
    call = sidecar.admin.Issue(auth_pb2.IssueRequest(subject="alice"), metadata=_padding(sidecar))
    assert await _refusal(call) == TOO_BIG


async def test_a_generically_registered_handler_is_wrapped_too() -> None:
    """Code that registers only a GenericRpcHandler (no registered-method table) still gets
    every layer: here one that records what it saw."""
    seen: list[str] = []

    def layer(behavior: Any, method: str) -> Any:
        async def recorded(request: Any, context: Any) -> Any:
            seen.append(method)
            assert current_call.get() is None  # the observing layer is not in this stack
            return await behavior(request, context)

        return recorded

    async def verify(request: auth_pb2.VerifyRequest, context: Any) -> auth_pb2.VerifyResponse:
        return auth_pb2.VerifyResponse(sub=request.token)

    handler = grpc.unary_unary_rpc_method_handler(
        verify,
        request_deserializer=auth_pb2.VerifyRequest.FromString,
        response_serializer=auth_pb2.VerifyResponse.SerializeToString,
    )
    server = LayeredServer(grpc.aio.server(), max_metadata_bytes=1024, unary_layers=[layer])
    generic = grpc.method_handlers_generic_handler(
        "authsidecar.v1.AuthService", {"Verify": handler}
    )
    server.add_generic_rpc_handlers((generic,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            verify_call = channel.unary_unary(
                "/authsidecar.v1.AuthService/Verify",
                request_serializer=auth_pb2.VerifyRequest.SerializeToString,
                response_deserializer=auth_pb2.VerifyResponse.FromString,
            )
            for _ in range(2):
                answer = await verify_call(auth_pb2.VerifyRequest(token="t"))
                assert answer.sub == "t"
            refused = verify_call(
                auth_pb2.VerifyRequest(token="t"), metadata=(("x-p", "p" * 2048),)
            )
            assert await _refusal(refused) == TOO_BIG
    finally:
        await server.stop(None)
    assert seen == ["/authsidecar.v1.AuthService/Verify"] * 3


async def test_a_sync_streaming_handler_is_refused_at_registration() -> None:
    """Left unwrapped it would silently lose the metadata limit."""

    def watch(request: Any, context: Any) -> Any:
        yield request

    handler: Any = grpc.unary_stream_rpc_method_handler(watch)
    server = LayeredServer(grpc.aio.server(), max_metadata_bytes=64)
    with pytest.raises(TypeError, match="must be async"):
        server.add_registered_method_handlers("x.Y", {"Watch": handler})
