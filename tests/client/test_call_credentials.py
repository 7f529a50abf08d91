"""bearer_call_credentials: the token as grpc call credentials, on a local (UDS) channel."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from authsidecar.client import (
    AuthClient,
    AuthPolicy,
    AuthServerInterceptor,
    StaticTokenSource,
    bearer_call_credentials,
)
from tests.client import services
from tests.client.tokens import mint
from tests.support.sidecar import RunningSidecar

UDS = grpc.LocalConnectionType.UDS


async def test_call_credentials_carry_the_bearer_token(
    sidecar: RunningSidecar, socket_dir: Path
) -> None:
    token = await mint(sidecar)
    target = f"unix:{socket_dir / 'b.sock'}"
    client = AuthClient(sidecar.unix_target)
    interceptor = AuthServerInterceptor(client, AuthPolicy(audience="svc-b"))
    server = grpc.server(ThreadPoolExecutor(max_workers=4), interceptors=[interceptor])
    server.add_generic_rpc_handlers((services.handler(aio=False),))
    server.add_secure_port(target, grpc.local_server_credentials(UDS))
    server.start()

    def call() -> bytes:
        credentials = grpc.composite_channel_credentials(
            grpc.local_channel_credentials(UDS), bearer_call_credentials(StaticTokenSource(token))
        )
        with grpc.secure_channel(target, credentials) as channel:
            whoami: grpc.UnaryUnaryMultiCallable[bytes, bytes]
            whoami = channel.unary_unary(services.method("Whoami"))
            return whoami(b"", timeout=10)

    try:
        assert await asyncio.to_thread(call) == b"alice"
    finally:
        await asyncio.to_thread(lambda: server.stop(None).wait())
        await asyncio.to_thread(interceptor.close)
        client.close()
