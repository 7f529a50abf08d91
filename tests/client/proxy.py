"""A real gRPC proxy in front of the sidecar that can be slow or fail: no mock of gRPC.

It forwards every AuthService call byte for byte, after `delay_s`, and answers the first
`fail_first[method]` attempts of a method with UNAVAILABLE instead. It counts the attempts
it saw per method, which is how the tests count sidecar round trips and retries.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

SERVICE = "authsidecar.v1.AuthService"
METHODS = ("Issue", "Verify", "VerifyBatch", "Refresh", "Introspect", "Revoke", "GetJwks")


@dataclass
class SidecarProxy:
    target: str
    attempts: collections.Counter[str] = field(default_factory=collections.Counter)
    delay_s: float = 0.0
    fail_first: dict[str, int] = field(default_factory=dict)


@contextlib.asynccontextmanager
async def sidecar_proxy(upstream: str, socket_dir: Path) -> AsyncIterator[SidecarProxy]:
    socket = socket_dir / "proxy.sock"
    proxy = SidecarProxy(target=f"unix:{socket}")
    channel = grpc.aio.insecure_channel(upstream)

    def forwarder(name: str) -> Any:
        upstream_call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            f"/{SERVICE}/{name}"
        )

        async def forward(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            proxy.attempts[name] += 1
            if proxy.fail_first.get(name, 0) >= proxy.attempts[name]:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "proxy says unavailable")
            await asyncio.sleep(proxy.delay_s)
            try:
                reply: bytes = await upstream_call(request, metadata=context.invocation_metadata())
            except grpc.aio.AioRpcError as error:
                trailing = tuple(error.trailing_metadata())
                await context.abort(error.code(), error.details() or "", trailing)
            return reply

        return grpc.unary_unary_rpc_method_handler(forward)

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {m: forwarder(m) for m in METHODS}),)
    )
    server.add_insecure_port(proxy.target)
    await server.start()
    try:
        yield proxy
    finally:
        await server.stop(None)
        await channel.close()
