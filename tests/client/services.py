"""A tiny bytes-only service ("demo.Echo") for the interceptor tests: no codegen needed.

Every method answers with the caller's `sub` as `current_claims()` reports it inside the
handler, so a test sees the claims reached the handler, for each of the four RPC kinds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import grpc

from authsidecar.client import current_claims

SERVICE = "demo.Echo"
KINDS = {
    "Whoami": "unary_unary",
    "Count": "unary_stream",
    "Sum": "stream_unary",
    "Chat": "stream_stream",
    "Public": "unary_unary",
}


def method(name: str) -> str:
    return f"/{SERVICE}/{name}"


def _who() -> bytes:
    claims = current_claims()
    return b"anonymous" if claims is None else claims.sub.encode()


def _whoami(request: bytes, context: Any) -> bytes:
    return _who()


def _count(request: bytes, context: Any) -> Iterator[bytes]:
    for i in range(int(request)):
        yield _who() + b":" + str(i).encode()


def _sum(requests: Iterable[bytes], context: Any) -> bytes:
    return _who() + b":" + b"+".join(requests)


def _chat(requests: Iterable[bytes], context: Any) -> Iterator[bytes]:
    for request in requests:
        yield _who() + b":" + request


async def _a_whoami(request: bytes, context: Any) -> bytes:
    return _who()


async def _a_count(request: bytes, context: Any) -> AsyncIterator[bytes]:
    for i in range(int(request)):
        yield _who() + b":" + str(i).encode()


async def _a_sum(requests: AsyncIterator[bytes], context: Any) -> bytes:
    return _who() + b":" + b"+".join([r async for r in requests])


async def _a_chat(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    async for request in requests:
        yield _who() + b":" + request


def handler(aio: bool) -> grpc.GenericRpcHandler:
    """The generic handler for demo.Echo, sync or asyncio (bytes in, bytes out)."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    if aio:
        handlers = {
            "Whoami": grpc.unary_unary_rpc_method_handler(_a_whoami),
            "Public": grpc.unary_unary_rpc_method_handler(_a_whoami),
            "Count": grpc.unary_stream_rpc_method_handler(_a_count),
            "Sum": grpc.stream_unary_rpc_method_handler(_a_sum),
            "Chat": grpc.stream_stream_rpc_method_handler(_a_chat),
        }
    else:
        handlers = {
            "Whoami": grpc.unary_unary_rpc_method_handler(_whoami),
            "Public": grpc.unary_unary_rpc_method_handler(_whoami),
            "Count": grpc.unary_stream_rpc_method_handler(_count),
            "Sum": grpc.stream_unary_rpc_method_handler(_sum),
            "Chat": grpc.stream_stream_rpc_method_handler(_chat),
        }
    return grpc.method_handlers_generic_handler(SERVICE, handlers)
