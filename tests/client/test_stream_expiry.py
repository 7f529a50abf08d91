"""A token that expires in the middle of a bidirectional stream.

Default: the stream is authenticated once, when it starts, and lives on after `exp`.
With `AuthPolicy(check_expiry_per_message=True)` the next message after `exp` ends the
stream with UNAUTHENTICATED / TOKEN_EXPIRED. Clock: the sidecar's FixedClock, shared with B.
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Iterator

import grpc

from authsidecar.client import (
    AuthPolicy,
    BearerClientInterceptor,
    StaticTokenSource,
    async_bearer_interceptors,
    error_reason,
)
from sidecar.clock import FixedClock
from tests.client.harness import OK, UNAUTHENTICATED, Outcome, service_b
from tests.client.tokens import mint
from tests.support.marks import AIO
from tests.support.sidecar import RunningSidecar

TTL_S = 60


def _sync_chat(target: str, token: str, clock: FixedClock) -> Outcome:
    requests: queue.Queue[bytes | None] = queue.Queue()

    def outgoing() -> Iterator[bytes]:
        while (item := requests.get()) is not None:
            yield item

    raw = grpc.insecure_channel(target)
    channel = grpc.intercept_channel(raw, BearerClientInterceptor(StaticTokenSource(token)))
    chat: grpc.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream("/demo.Echo/Chat")
    responses: Iterator[bytes] = chat(outgoing(), timeout=10)
    got: list[bytes] = []
    try:
        requests.put(b"1")
        got.append(next(responses))
        clock.advance(TTL_S + 1)
        requests.put(b"2")
        got.append(next(responses))
        requests.put(None)
        got.extend(responses)
        return Outcome(OK, "", got)
    except grpc.RpcError as error:
        assert isinstance(error, grpc.Call)
        return Outcome(error.code(), error_reason(error), got)
    finally:
        requests.put(None)
        raw.close()


async def _aio_chat(target: str, token: str, clock: FixedClock) -> Outcome:
    interceptors = async_bearer_interceptors(StaticTokenSource(token))
    got: list[bytes] = []
    async with grpc.aio.insecure_channel(target, interceptors=interceptors) as channel:
        chat: grpc.aio.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(
            "/demo.Echo/Chat"
        )
        call = chat(timeout=10)
        try:
            await call.write(b"1")
            first = await call.read()
            assert isinstance(first, bytes)
            got.append(first)
            clock.advance(TTL_S + 1)
            await call.write(b"2")
            second = await call.read()
            if isinstance(second, bytes):
                got.append(second)
            await call.done_writing()
        except grpc.aio.AioRpcError as error:
            return Outcome(error.code(), error_reason(error), got)
        return Outcome(await call.code(), "", got)


async def chat(aio: bool, target: str, token: str, clock: FixedClock) -> Outcome:
    if aio:
        return await _aio_chat(target, token, clock)
    return await asyncio.to_thread(_sync_chat, target, token, clock)


@AIO
async def test_stream_outlives_token_expiry_by_default(sidecar: RunningSidecar, aio: bool) -> None:
    token = await mint(sidecar, ttl_s=TTL_S)
    policy = AuthPolicy(audience="svc-b")
    async with service_b(aio, sidecar.unix_target, policy, now=sidecar.clock.now) as b:
        outcome = await chat(aio, b, token, sidecar.clock)
    assert (outcome.code, outcome.messages) == (OK, [b"alice:1", b"alice:2"])


@AIO
async def test_per_message_check_ends_stream_when_token_expires(
    sidecar: RunningSidecar, aio: bool
) -> None:
    token = await mint(sidecar, ttl_s=TTL_S)
    policy = AuthPolicy(audience="svc-b", check_expiry_per_message=True)
    async with service_b(aio, sidecar.unix_target, policy, now=sidecar.clock.now) as b:
        outcome = await chat(aio, b, token, sidecar.clock)
    assert (outcome.code, outcome.reason, outcome.messages) == (
        UNAUTHENTICATED,
        "TOKEN_EXPIRED",
        [b"alice:1"],
    )
