"""VerifyStream (issue 15): batches as messages on one open stream, against a real sidecar.

The asyncio server interceptor's batcher sends its misses this way. Every answer must be the
unary one (claims, or error class, code and reason), and whatever ends the stream (a cut, an
old sidecar, the sidecar stopping) every waiting caller still gets its answer, by a unary
resend. Unary calls are counted by a client interceptor (tests/client/batch_harness.py) or by
the proxy (tests/client/proxy.py), which also counts the stream's messages.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from authsidecar.client import (
    AsyncAuthClient,
    AsyncVerifyBatcher,
    AuthPolicy,
    StaticTokenSource,
    VerifiedClaims,
)
from authsidecar.client._verify_stream import AsyncVerifyStream
from authsidecar.v1 import auth_pb2, auth_pb2_grpc
from tests.client.batch_harness import Batching, unary_outcomes
from tests.client.harness import OK, call_b, callee
from tests.client.proxy import sidecar_proxy
from tests.client.test_verify_batching import mixed_asks, reasons_of
from tests.client.tokens import mint
from tests.integration.test_observability import _scrape
from tests.support.sidecar import RunningSidecar, reason_of, running_sidecar

POLICY = AuthPolicy(audience="svc-b")


def stream_of(batcher: AsyncVerifyBatcher) -> AsyncVerifyStream:
    stream = batcher._stream
    assert stream is not None
    return stream


async def test_stream_answers_every_ask_as_unary_verify_does(sidecar: RunningSidecar) -> None:
    asks, reasons = await mixed_asks(sidecar)
    async with AsyncAuthClient(sidecar.unix_target) as unary:
        expected = await unary_outcomes(unary, asks)
        items = [auth_pb2.VerifyRequest(token=a.token, audience=a.audience) for a in asks]
        for item, ask in zip(items, asks, strict=True):
            item.required_scopes.extend(ask.scopes)
        reference = await unary._stub.VerifyBatch(auth_pb2.VerifyBatchRequest(requests=items))
    batching = Batching(True, sidecar.unix_target, max_in_flight=1, stream=True)
    assert isinstance(batching.batcher, AsyncVerifyBatcher)
    alone = [(await batching.verify_all([ask]))[0] for ask in asks]
    together = await batching.verify_all(asks)
    stream = stream_of(batching.batcher)
    await batching.close()
    assert alone == expected and together == expected
    assert reasons_of(expected) == reasons
    # Not one unary call: every batch went on the one stream, opened once.
    assert (batching.counted.verifies, batching.counted.batch_sizes) == (0, [])
    assert stream.opened == 1 and not stream.disabled
    # The raw VerifyStream answer is byte for byte VerifyBatch's for the same message.
    async with grpc.aio.insecure_channel(sidecar.unix_target) as channel:
        call = auth_pb2_grpc.AuthServiceStub(channel).VerifyStream()
        await call.write(auth_pb2.VerifyBatchRequest(requests=items))
        answer = await call.read()
        await call.done_writing()
        assert await call.read() is grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK
    assert answer == reference


async def test_concurrent_misses_share_stream_messages(
    sidecar: RunningSidecar, socket_dir: Path
) -> None:
    """64 callers with 64 distinct tokens at once, through the real interceptor: every call
    answered with the sidecar's claims, in fewer stream messages than calls, no unary call."""
    tokens = [await mint(sidecar, sub=f"user-{i}") for i in range(64)]
    async with (
        sidecar_proxy(sidecar.unix_target, socket_dir, verify_stream=True) as proxy,
        callee(True, proxy.target, POLICY, cache_decisions=False) as b,
    ):
        outcomes = await asyncio.gather(
            *(call_b(True, b.target, StaticTokenSource(t), "Whoami") for t in tokens)
        )
    assert [o.code for o in outcomes] == [OK] * 64
    assert [o.messages[0].decode() for o in outcomes] == [f"user-{i}" for i in range(64)]
    assert proxy.attempts["Verify"] + proxy.attempts["VerifyBatch"] == 0
    assert proxy.attempts["VerifyStream"] == 1
    assert sum(proxy.stream_items) == 64
    assert len(proxy.stream_items) < 64, proxy.stream_items


async def test_a_cut_stream_leaves_no_caller_waiting_and_each_gets_its_answer(
    sidecar: RunningSidecar, socket_dir: Path
) -> None:
    asks, _ = await mixed_asks(sidecar)
    async with AsyncAuthClient(sidecar.unix_target) as unary:
        expected = await unary_outcomes(unary, asks)
    async with sidecar_proxy(sidecar.unix_target, socket_dir, verify_stream=True) as proxy:
        proxy.hold = asyncio.Event()  # the stream's messages wait in the proxy
        client = AsyncAuthClient(proxy.target, timeout_s=30)
        batcher = AsyncVerifyBatcher(client, max_in_flight=1, stream=True)
        answers = asyncio.gather(
            *(batcher.verify(a.token, audience=a.audience, required_scopes=a.scopes) for a in asks),
            return_exceptions=True,
        )
        async with asyncio.timeout(30):
            while proxy.attempts["VerifyStream.message"] < 1:
                await asyncio.sleep(0.005)
        proxy.cut_streams()  # mid-flight: a message sent, no answer
        async with asyncio.timeout(30):
            while proxy.attempts["Verify"] + proxy.attempts["VerifyBatch"] < 1:
                await asyncio.sleep(0.005)
        proxy.hold.set()
        async with asyncio.timeout(30):
            results = await answers
        await batcher.close()
        await client.close()
    settled = [
        r if isinstance(r, VerifiedClaims) else (type(r), r.code, r.reason)  # type: ignore[attr-defined]
        for r in results
    ]
    assert settled == expected
    # The waiting callers were resent as unary; the stream was not used for them twice.
    assert proxy.attempts["VerifyStream.message"] >= 1


async def test_an_old_sidecar_without_the_stream_gets_unary_calls(
    sidecar: RunningSidecar, socket_dir: Path
) -> None:
    """The proxy without VerifyStream is an old sidecar: UNIMPLEMENTED once, then unary
    only, and every answer the unary one."""
    asks, _ = await mixed_asks(sidecar)
    async with AsyncAuthClient(sidecar.unix_target) as unary:
        expected = await unary_outcomes(unary, asks)
    async with sidecar_proxy(sidecar.unix_target, socket_dir) as proxy:
        batching = Batching(True, proxy.target, max_in_flight=1, stream=True)
        assert isinstance(batching.batcher, AsyncVerifyBatcher)
        first = await batching.verify_all(asks)
        alone = [(await batching.verify_all([ask]))[0] for ask in asks]
        stream = stream_of(batching.batcher)
        await batching.close()
    assert first == expected and alone == expected
    assert stream.disabled and stream.opened == 1
    assert proxy.attempts["Verify"] == len(asks)  # each lone ask: Verify, as before
    assert proxy.attempts["VerifyBatch"] == 1


@pytest.mark.parametrize(
    ("message", "code", "reason"),
    [
        (b"\xff\xff\xff", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST"),
        (
            auth_pb2.VerifyBatchRequest(
                requests=[auth_pb2.VerifyRequest(token="x.y.z")] * 257
            ).SerializeToString(),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_REQUEST",
        ),
        (
            auth_pb2.VerifyBatchRequest(
                requests=[auth_pb2.VerifyRequest(token="x" * 8000)] * 200
            ).SerializeToString(),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "",
        ),
    ],
    ids=["unparseable", "over-the-batch-cap", "over-the-message-size"],
)
async def test_a_hostile_message_ends_the_stream_with_a_precise_status(
    sidecar: RunningSidecar, message: bytes, code: grpc.StatusCode, reason: str
) -> None:
    """What came before it stays answered; the hostile message ends the stream with
    VerifyBatch's status for it, never INTERNAL or UNKNOWN."""
    good = await mint(sidecar)
    first = auth_pb2.VerifyBatchRequest(requests=[auth_pb2.VerifyRequest(token=good)])
    async with grpc.aio.insecure_channel(sidecar.unix_target) as channel:
        call = channel.stream_stream(
            "/authsidecar.v1.AuthService/VerifyStream",
            request_serializer=lambda b: b,
            response_deserializer=auth_pb2.VerifyBatchResponse.FromString,
        )()
        await call.write(first.SerializeToString())
        answer = await call.read()
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await call.write(message)
            await call.read()
    assert isinstance(answer, auth_pb2.VerifyBatchResponse)
    assert answer.results[0].WhichOneof("outcome") == "ok"
    assert reason_of(ended.value) == (code, reason)


async def test_each_stream_message_is_counted_like_a_verify_batch_call(data_dir: Path) -> None:
    """Metrics: one request per message, labelled VerifyStream, with VerifyBatch's code and
    reason for a message refused as a whole."""
    async with running_sidecar(
        data_dir, tokens={"audiences": ["svc-b"]}, metrics={"listen": "127.0.0.1:0"}
    ) as sidecar:
        good = await mint(sidecar)
        one = auth_pb2.VerifyBatchRequest(requests=[auth_pb2.VerifyRequest(token=good)])
        over = auth_pb2.VerifyBatchRequest(requests=[auth_pb2.VerifyRequest(token="x.y.z")] * 257)
        async with grpc.aio.insecure_channel(sidecar.unix_target) as channel:
            call = auth_pb2_grpc.AuthServiceStub(channel).VerifyStream()
            for _ in range(3):
                await call.write(one)
                await call.read()
            await call.write(over)
            with pytest.raises(grpc.aio.AioRpcError):
                await call.read()
        server = sidecar.app.metrics_server
        assert server is not None
        samples = await asyncio.to_thread(_scrape, server.address)
    method = "/authsidecar.v1.AuthService/VerifyStream"

    def value(**labels: str) -> float:
        return samples[("authsidecar_requests_total", tuple(sorted(labels.items())))]

    assert value(method=method, code="OK", reason="") == 3
    assert value(method=method, code="INVALID_ARGUMENT", reason="INVALID_REQUEST") == 1
