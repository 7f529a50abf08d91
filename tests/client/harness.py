"""Service A calls service B, both real gRPC, sync or asyncio, against a real sidecar.

Sync code blocks, and the sidecar under test runs on the test's event loop, so every sync
step runs in a worker thread (`asyncio.to_thread`) while the loop keeps serving the sidecar.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, cast

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_health.v1._async import HealthServicer as AsyncHealthServicer

from authsidecar.client import (
    AsyncAuthClient,
    AsyncAuthServerInterceptor,
    AsyncTokenSource,
    AuthClient,
    AuthPolicy,
    AuthServerInterceptor,
    BearerClientInterceptor,
    TokenSource,
    async_bearer_interceptors,
    error_reason,
)
from tests.client import services

OK = grpc.StatusCode.OK
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED


@dataclass
class Outcome:
    code: grpc.StatusCode
    reason: str = ""
    messages: list[bytes] = field(default_factory=list)


@dataclass
class Callee:
    """Service B as a test sees it: where to call it, and its interceptor (for `stats()`)."""

    target: str
    interceptor: AuthServerInterceptor | AsyncAuthServerInterceptor


@contextlib.asynccontextmanager
async def callee(
    aio: bool,
    sidecar_target: str,
    policy: AuthPolicy | None = None,
    **options: Any,
) -> AsyncIterator[Callee]:
    """Service B (the callee) with the server interceptor built with `options`; the
    interceptor is closed (watcher stopped) before its client, as the docs ask."""
    if aio:
        client = AsyncAuthClient(sidecar_target)
        interceptor = AsyncAuthServerInterceptor(client, policy, **options)
        server = grpc.aio.server(interceptors=[interceptor])
        server.add_generic_rpc_handlers((services.handler(aio=True),))
        health_pb2_grpc.add_HealthServicer_to_server(AsyncHealthServicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            yield Callee(f"127.0.0.1:{port}", interceptor)
        finally:
            await server.stop(None)
            await interceptor.aclose()
            await client.close()
        return
    sync_client = AuthClient(sidecar_target)
    sync_interceptor = AuthServerInterceptor(sync_client, policy, **options)
    sync_server = grpc.server(ThreadPoolExecutor(max_workers=16), interceptors=[sync_interceptor])
    sync_server.add_generic_rpc_handlers((services.handler(aio=False),))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), sync_server)
    port = sync_server.add_insecure_port("127.0.0.1:0")
    sync_server.start()
    try:
        yield Callee(f"127.0.0.1:{port}", sync_interceptor)
    finally:
        await asyncio.to_thread(lambda: sync_server.stop(None).wait())
        await asyncio.to_thread(sync_interceptor.close)
        sync_client.close()


@contextlib.asynccontextmanager
async def service_b(
    aio: bool,
    sidecar_target: str,
    policy: AuthPolicy | None = None,
    *,
    now: Callable[[], float] | None = None,
    **options: Any,
) -> AsyncIterator[str]:
    """Service B (the callee) with the server interceptor; yields its address."""
    if now is not None:
        options["now"] = now
    async with callee(aio, sidecar_target, policy, **options) as b:
        yield b.target


def _sync_call(
    target: str, source: TokenSource | None, name: str, payload: Sequence[bytes]
) -> Outcome:
    raw = grpc.insecure_channel(target)
    channel = (
        raw if source is None else grpc.intercept_channel(raw, BearerClientInterceptor(source))
    )
    kind = services.KINDS[name]
    got: list[bytes] = []
    try:
        callable_: Any = getattr(channel, kind)(services.method(name))
        if kind == "unary_unary":
            got.append(callable_(payload[0], timeout=10))
        elif kind == "unary_stream":
            got.extend(callable_(payload[0], timeout=10))
        elif kind == "stream_unary":
            got.append(callable_(iter(payload), timeout=10))
        else:
            got.extend(callable_(iter(payload), timeout=10))
        return Outcome(OK, "", got)
    except grpc.RpcError as error:
        assert isinstance(error, grpc.Call)
        return Outcome(error.code(), error_reason(error), got)
    finally:
        raw.close()


async def _aio_call(
    target: str,
    source: TokenSource | AsyncTokenSource | None,
    name: str,
    payload: Sequence[bytes],
) -> Outcome:
    interceptors = None if source is None else async_bearer_interceptors(source)
    kind = services.KINDS[name]
    got: list[bytes] = []
    async with grpc.aio.insecure_channel(target, interceptors=interceptors) as channel:
        callable_: Any = getattr(channel, kind)(services.method(name))
        try:
            if kind == "unary_unary":
                got.append(await callable_(payload[0], timeout=10))
            elif kind == "unary_stream":
                got.extend([m async for m in callable_(payload[0], timeout=10)])
            elif kind == "stream_unary":
                got.append(await callable_(iter(payload), timeout=10))
            else:
                got.extend([m async for m in callable_(iter(payload), timeout=10)])
            return Outcome(OK, "", got)
        except grpc.aio.AioRpcError as error:
            return Outcome(error.code(), error_reason(error), got)


async def call_b(
    aio: bool,
    target: str,
    source: TokenSource | AsyncTokenSource | None,
    name: str,
    payload: Sequence[bytes] = (b"2",),
) -> Outcome:
    """Service A (the caller) calls B's `name`, through the client interceptor when a
    token source is given; the status and ErrorInfo reason are returned, never raised."""
    if aio:
        return await _aio_call(target, source, name, payload)
    sync_source = cast("TokenSource | None", source)
    return await asyncio.to_thread(_sync_call, target, sync_source, name, payload)
