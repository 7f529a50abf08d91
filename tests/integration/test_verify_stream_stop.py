"""VerifyStream at the sidecar's stop (transport/verify_stream.py, transport/drain.py).

A real grpc.aio server with the real layers and gate; the handler is the real VerifyStreams
around a verify of our own that the test holds, so "a message is being verified when the
stop begins" happens on purpose rather than by luck. What is pinned: a message read before
the stop is answered, none is read after it, and the stream ends UNAVAILABLE /
SHUTTING_DOWN (auth.proto); a stream only waiting for its next message ends at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, cast

import grpc
import pytest

from authsidecar.v1 import auth_pb2
from sidecar.transport.drain import CallGate
from sidecar.transport.layers import LayeredServer
from sidecar.transport.verify_stream import VerifyStreams
from tests.support.polling import eventually
from tests.support.sidecar import reason_of

SERVICE = "authsidecar.v1.AuthService"
Stream = grpc.aio.StreamStreamCall[auth_pb2.VerifyBatchRequest, auth_pb2.VerifyBatchResponse]


@dataclass
class HeldVerify:
    """Answers each item TOKEN_MALFORMED, once `release` is set; counts what it verified."""

    entered: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    verified: list[int] = field(default_factory=list)

    async def __call__(
        self, request: auth_pb2.VerifyBatchRequest, context: Any
    ) -> auth_pb2.VerifyBatchResponse:
        self.entered.set()
        await self.release.wait()
        self.verified.append(len(request.requests))
        return auth_pb2.VerifyBatchResponse(
            results=[
                auth_pb2.VerifyBatchResult(error=auth_pb2.TOKEN_MALFORMED) for _ in request.requests
            ]
        )


@dataclass
class Served:
    gate: CallGate
    verify: HeldVerify
    stream: Stream


@pytest.fixture
async def served(tmp_path: Any) -> AsyncIterator[Served]:
    gate = CallGate()
    verify = HeldVerify()
    server = LayeredServer(grpc.aio.server(), max_metadata_bytes=8192, gate=gate)
    handler = grpc.stream_stream_rpc_method_handler(
        VerifyStreams(verify, gate).stream,
        request_deserializer=auth_pb2.VerifyBatchRequest.FromString,
        response_serializer=auth_pb2.VerifyBatchResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"VerifyStream": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    open_stream = channel.stream_stream(
        f"/{SERVICE}/VerifyStream",
        request_serializer=auth_pb2.VerifyBatchRequest.SerializeToString,
        response_deserializer=auth_pb2.VerifyBatchResponse.FromString,
    )
    stream = cast(Stream, open_stream())
    try:
        yield Served(gate, verify, stream)
    finally:
        stream.cancel()
        await channel.close()
        await server.stop(None)


def batch(n: int) -> auth_pb2.VerifyBatchRequest:
    return auth_pb2.VerifyBatchRequest(requests=[auth_pb2.VerifyRequest(token="t")] * n)


async def test_a_message_being_verified_at_the_stop_is_answered_then_the_stream_ends(
    served: Served,
) -> None:
    await served.stream.write(batch(3))
    async with asyncio.timeout(30):
        await served.verify.entered.wait()
    served.gate.refuse()
    await served.stream.write(batch(2))  # sent after the stop began: never read
    await asyncio.sleep(0.05)
    assert not served.stream.done()  # the stop waits for the answer being made
    served.verify.release.set()
    async with asyncio.timeout(30):
        answer = await served.stream.read()
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await served.stream.read()
    assert isinstance(answer, auth_pb2.VerifyBatchResponse) and len(answer.results) == 3
    assert reason_of(ended.value) == (grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN")
    assert served.verify.verified == [3]
    # The call's status can reach the client before its handler has left the gate.
    await eventually(lambda: served.gate.running == 0, "the stream left the gate")


async def test_a_stream_waiting_for_its_next_message_ends_at_the_stop(served: Served) -> None:
    served.verify.release.set()
    await served.stream.write(batch(1))
    async with asyncio.timeout(30):
        first = await served.stream.read()
        served.gate.refuse()
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await served.stream.read()
    assert isinstance(first, auth_pb2.VerifyBatchResponse) and len(first.results) == 1
    assert reason_of(ended.value) == (grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN")
    assert served.verify.verified == [1]


async def test_a_stream_opened_after_the_stop_is_refused_before_reading(served: Served) -> None:
    served.gate.refuse()
    await served.stream.write(batch(1))
    async with asyncio.timeout(30):
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await served.stream.read()
    assert reason_of(ended.value) == (grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN")
    assert served.verify.verified == []
