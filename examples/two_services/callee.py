"""The callee: a tiny Greeter (asyncio) that answers only callers the sidecar vouches for.

    .venv/bin/python examples/two_services/callee.py --sidecar unix:.authsidecar/run/auth.sock

Messages are raw bytes (generic handlers), so the demo needs no generated code, and it needs
nothing but `authsidecar-client` (tests/client/test_client_distribution.py runs it from a venv
holding only that wheel). Every call to demo.Greeter must carry a token for audience "greeter"
with scope "greet". When grpcio-health-checking is installed the callee also serves
grpc.health.v1, which is exempt by default, as it is for every AuthPolicy.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import grpc

from authsidecar.client import (
    AsyncAuthClient,
    AsyncAuthServerInterceptor,
    AuthPolicy,
    current_claims,
)

SERVICE = "demo.Greeter"


def _caller() -> str:
    claims = current_claims()
    return claims.sub if claims is not None else "stranger"


async def hello(request: bytes, context: Any) -> bytes:
    return f"hello {_caller()}, you said {request.decode()!r}".encode()


async def count(request: bytes, context: Any) -> AsyncIterator[bytes]:
    for i in range(int(request or b"3")):
        yield f"{_caller()} #{i}".encode()


async def serve(listen: str, sidecar: str | None) -> None:
    policy = AuthPolicy(audience="greeter", method_scopes={f"/{SERVICE}/*": ("greet",)})
    auth = AsyncAuthClient(sidecar)
    # Caches the sidecar's decisions while its Watch stream is current; closed below.
    interceptor = AsyncAuthServerInterceptor(auth, policy)
    server = grpc.aio.server(interceptors=[interceptor])
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "Hello": grpc.unary_unary_rpc_method_handler(hello),
        "Count": grpc.unary_stream_rpc_method_handler(count),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    _add_health(server)
    port = server.add_insecure_port(listen)
    await server.start()
    host = listen.rpartition(":")[0]
    print(f"callee listening on {host}:{port} (sidecar {auth.address})", flush=True)
    try:
        await server.wait_for_termination()
    finally:
        await interceptor.aclose()
        await auth.close()


def _add_health(server: grpc.aio.Server) -> None:
    """grpc.health.v1 when grpcio-health-checking is there; the demo runs without it."""
    try:
        from grpc_health.v1 import health_pb2_grpc
        from grpc_health.v1._async import HealthServicer
    except ImportError:
        return
    health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(), server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:50061", help="host:port (port 0: any)")
    parser.add_argument(
        "--sidecar",
        default=os.environ.get("AUTHSIDECAR_ADDR"),
        help="the sidecar's public address (default: $AUTHSIDECAR_ADDR, then 127.0.0.1:50051)",
    )
    args = parser.parse_args()
    try:
        asyncio.run(serve(args.listen, args.sidecar))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
