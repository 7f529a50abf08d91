"""A real gRPC proxy in front of the sidecar that can be slow or fail: no mock of gRPC.

It forwards every AuthService call byte for byte, after `delay_s` (and, when `hold` is an
Event, once it is set: the test decides when the "sidecar" answers), and answers the first
`fail_first[method]` attempts of a method with UNAVAILABLE instead. It counts the attempts
it saw per method, which is how the tests count sidecar round trips and retries.

The Watch stream is forwarded message by message. `cut_streams()` ends every forwarded
stream with UNAVAILABLE (what a subscriber sees when the path to the sidecar breaks), and
`block_watch` answers new Watch calls with UNAVAILABLE until it is cleared.

VerifyStream is forwarded only when asked (`verify_stream=True`): otherwise the proxy is an
old sidecar without it (UNIMPLEMENTED), and the round trips it counts are the unary ones.
Forwarded, each message counts as an attempt of "VerifyStream.message" (its number of items
in `stream_items`), waits like a unary call (`delay_s`, `hold`), and `cut_streams()` ends
the stream with UNAVAILABLE too.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from authsidecar.v1.auth_pb2 import VerifyBatchRequest

SERVICE = "authsidecar.v1.AuthService"
METHODS = ("Issue", "Verify", "VerifyBatch", "Refresh", "Introspect", "Revoke", "GetJwks")


_CUT = object()


@dataclass
class SidecarProxy:
    target: str
    attempts: collections.Counter[str] = field(default_factory=collections.Counter)
    delay_s: float = 0.0
    fail_first: dict[str, int] = field(default_factory=dict)
    block_watch: bool = False
    hold: asyncio.Event | None = None
    streams: set[asyncio.Queue[object]] = field(default_factory=set)
    stream_items: list[int] = field(default_factory=list)

    def cut_streams(self) -> None:
        for stream in self.streams:
            stream.put_nowait(_CUT)


@contextlib.asynccontextmanager
async def sidecar_proxy(
    upstream: str, socket_dir: Path, *, verify_stream: bool = False
) -> AsyncIterator[SidecarProxy]:
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
            if proxy.hold is not None:
                await proxy.hold.wait()
            try:
                reply: bytes = await upstream_call(request, metadata=context.invocation_metadata())
            except grpc.aio.AioRpcError as error:
                trailing = tuple(error.trailing_metadata())
                await context.abort(error.code(), error.details() or "", trailing)
            return reply

        return grpc.unary_unary_rpc_method_handler(forward)

    async def relay(
        upstream_call: Any, context: grpc.aio.ServicerContext[Any, Any], tasks: tuple[Any, ...]
    ) -> AsyncGenerator[bytes, None]:
        """Yield the upstream stream's messages until it ends; a cut (`cut_streams`) or an
        upstream error ends the proxied call with that status (and trailers)."""
        queue: asyncio.Queue[object] = asyncio.Queue()

        async def pump() -> None:
            try:
                async for message in upstream_call:
                    queue.put_nowait(message)
                queue.put_nowait(None)
            except grpc.aio.AioRpcError as error:
                queue.put_nowait(error)

        pumping = asyncio.create_task(pump())
        proxy.streams.add(queue)
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return
                if item is _CUT:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "proxy cut the stream")
                if isinstance(item, grpc.aio.AioRpcError):
                    trailing = tuple(item.trailing_metadata())
                    await context.abort(item.code(), item.details() or "", trailing)
                assert isinstance(item, bytes)
                yield item
        finally:
            proxy.streams.discard(queue)
            upstream_call.cancel()
            pumping.cancel()
            for task in tasks:
                task.cancel()

    async def watch(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        proxy.attempts["Watch"] += 1
        if proxy.block_watch:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "proxy blocks Watch")
        open_upstream: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(
            f"/{SERVICE}/Watch"
        )
        upstream_call = open_upstream(request, metadata=context.invocation_metadata())
        async with contextlib.aclosing(relay(upstream_call, context, ())) as items:
            async for item in items:  # closed with the call, so its `finally` runs at once
                yield item

    async def verify_messages(
        requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        proxy.attempts["VerifyStream"] += 1
        open_upstream: grpc.aio.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(
            f"/{SERVICE}/VerifyStream"
        )
        upstream_call = open_upstream(metadata=context.invocation_metadata())

        async def forward() -> None:
            async for message in requests:
                proxy.attempts["VerifyStream.message"] += 1
                proxy.stream_items.append(len(VerifyBatchRequest.FromString(message).requests))
                await asyncio.sleep(proxy.delay_s)
                if proxy.hold is not None:
                    await proxy.hold.wait()
                await upstream_call.write(message)
            await upstream_call.done_writing()

        writing = asyncio.create_task(forward())
        async with contextlib.aclosing(relay(upstream_call, context, (writing,))) as items:
            async for item in items:  # closed with the call, so its `finally` runs at once
                yield item

    handlers = {m: forwarder(m) for m in METHODS}
    handlers["Watch"] = grpc.unary_stream_rpc_method_handler(watch)
    if verify_stream:
        handlers["VerifyStream"] = grpc.stream_stream_rpc_method_handler(verify_messages)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_insecure_port(proxy.target)
    await server.start()
    try:
        yield proxy
    finally:
        await server.stop(None)
        await channel.close()
