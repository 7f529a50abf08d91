"""verify_batch and the batchers against a real sidecar: the answers Verify gives, in few calls.

Each batched answer is compared with what the unary Verify says for the same ask: the claims,
or the error's class, code and reason. VerifyBatch calls are counted by a client interceptor
on the batcher's channel (tests/client/batch_harness.py), and attempts by the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from authsidecar.client import (
    AsyncAuthClient,
    AsyncAuthServerInterceptor,
    AsyncVerifyBatcher,
    AuthClient,
    AuthClientError,
    AuthPolicy,
    AuthServerInterceptor,
    InvalidRequestError,
    SidecarUnavailableError,
    StaticTokenSource,
    VerifiedClaims,
    VerifyBatcher,
    VerifyItem,
)
from authsidecar.client._errors import REASON_CODES
from authsidecar.v1 import auth_pb2
from tests.client import services
from tests.client.batch_harness import Ask, Batching, Outcome, unary_outcomes
from tests.client.harness import OK, UNAUTHENTICATED, call_b
from tests.client.proxy import sidecar_proxy
from tests.client.tokens import mint
from tests.support.marks import AIO
from tests.support.polling import eventually
from tests.support.sidecar import RunningSidecar, running_sidecar

PROTO = Path(__file__).resolve().parents[2] / "protos/authsidecar/v1/auth.proto"
AUDIENCES = {"audiences": ["svc-a", "svc-b"]}
UNAVAILABLE = (SidecarUnavailableError, grpc.StatusCode.UNAVAILABLE, "")


def reasons_of(outcomes: list[Outcome]) -> list[str]:
    return ["OK" if isinstance(o, VerifiedClaims) else o[2] for o in outcomes]


def settled(result: VerifiedClaims | AuthClientError) -> Outcome:
    if isinstance(result, AuthClientError):
        return type(result), result.code, result.reason
    return result


async def mixed_asks(sidecar: RunningSidecar) -> tuple[list[Ask], list[str]]:
    """One ask per way Verify can answer, and the reason each must get."""
    expired = await mint(sidecar, ttl_s=60)
    sidecar.clock.advance(60 + sidecar.settings.tokens.leeway_s + 1)
    good = await mint(sidecar, scope="read")
    revoked = await mint(sidecar)
    await sidecar.public.Revoke(auth_pb2.RevokeRequest(token=revoked))
    issued = auth_pb2.IssueRequest(subject="alice", audience=["svc-b"], refresh_token=True)
    refresh = (await sidecar.admin.Issue(issued)).refresh_token
    tampered = good[:-4] + ("BBBB" if good.endswith("AAAA") else "AAAA")
    asks = [
        Ask(good, "svc-b", ("read",)),
        Ask(expired, "svc-b"),
        Ask("not.a.token"),
        Ask(good, "svc-a"),
        Ask(good, "svc-b", ("admin",)),
        Ask(revoked),
        Ask(refresh),
        Ask(""),
        Ask(tampered),
        Ask(good),
    ]
    reasons = [
        "OK",
        "TOKEN_EXPIRED",
        "TOKEN_MALFORMED",
        "AUDIENCE_MISMATCH",
        "SCOPE_MISSING",
        "TOKEN_REVOKED",
        "WRONG_TOKEN_TYPE",
        "INVALID_REQUEST",
        "SIGNATURE_INVALID",
        "OK",
    ]
    return asks, reasons


def test_reason_codes_are_the_ones_the_proto_documents() -> None:
    documented: dict[str, grpc.StatusCode] = {}
    code = None
    enum = PROTO.read_text().split("enum ErrorReason {", 1)[1].split("}", 1)[0]
    for line in enum.splitlines():
        if bracket := re.search(r"//\s*\[([A-Z_]+)\]", line):
            code = grpc.StatusCode[bracket.group(1)]
        elif (value := re.match(r"\s*([A-Z_]+) = \d+;", line)) and code is not None:
            documented[value.group(1)] = code
            code = None
    names = {name for name, number in auth_pb2.ErrorReason.items() if number}
    assert set(documented) == names
    assert dict(REASON_CODES) == documented


@AIO
async def test_verify_batch_answers_each_item_as_verify_would(
    sidecar: RunningSidecar, aio: bool
) -> None:
    asks, reasons = await mixed_asks(sidecar)
    items = [VerifyItem(a.token, a.audience, a.scopes) for a in asks]
    good = asks[0].token
    async with AsyncAuthClient(sidecar.unix_target) as unary:
        expected = await unary_outcomes(unary, asks)
    if aio:
        async with AsyncAuthClient(sidecar.unix_target) as client:
            results = await client.verify_batch(items)
            bare = await client.verify_batch([good, good], audience="svc-a")
            with pytest.raises(InvalidRequestError) as over_cap:
                await client.verify_batch(["x.y.z"] * 257)
    else:
        with AuthClient(sidecar.unix_target) as sync_client:
            results = await asyncio.to_thread(sync_client.verify_batch, items)
            bare = await asyncio.to_thread(sync_client.verify_batch, [good], audience="svc-a")
            with pytest.raises(InvalidRequestError) as over_cap:
                await asyncio.to_thread(sync_client.verify_batch, ["x.y.z"] * 257)
    assert [settled(r) for r in results] == expected
    assert reasons_of(expected) == reasons
    # A bare token takes the call's audience; a batch over the cap is refused whole.
    assert {settled(r)[2] for r in bare} == {"AUDIENCE_MISMATCH"}  # type: ignore[index]
    assert over_cap.value.reason == "INVALID_REQUEST"


@AIO
async def test_concurrent_callers_get_the_unary_results_from_few_calls(
    sidecar: RunningSidecar, aio: bool
) -> None:
    asks = [Ask(await mint(sidecar, sub=f"user-{i}"), "svc-b", ("read",)) for i in range(200)]
    async with AsyncAuthClient(sidecar.unix_target) as unary:
        expected = await unary_outcomes(unary, asks)
    # asyncio keeps its default delay (the next loop turn); threads get time to gather.
    batching = Batching(aio, sidecar.unix_target, **({} if aio else {"max_delay_s": 0.02}))
    outcomes = await batching.verify_all(asks)
    await batching.close()
    assert all(isinstance(o, VerifiedClaims) for o in expected)
    assert outcomes == expected
    sizes = batching.counted.batch_sizes
    assert sum(sizes) == 200 and max(sizes) <= 100
    assert len(sizes) <= 200 // 20, sizes
    assert batching.counted.verifies == 0


@AIO
async def test_each_caller_gets_its_own_reason_from_one_batch(
    sidecar: RunningSidecar, aio: bool
) -> None:
    asks, reasons = await mixed_asks(sidecar)
    async with AsyncAuthClient(sidecar.unix_target) as unary:
        expected = await unary_outcomes(unary, asks)
    batching = Batching(aio, sidecar.unix_target, max_delay_s=0.05)
    outcomes = await batching.verify_all(asks)
    await batching.close()
    assert outcomes == expected
    assert reasons_of(outcomes) == reasons
    assert batching.counted.batch_sizes == [len(asks)]


async def test_a_lone_caller_of_the_interceptors_batcher_gets_verifys_own_answer(
    sidecar: RunningSidecar,
) -> None:
    """With `max_in_flight` (the server interceptors' batcher), a caller alone in its batch
    is sent as Verify: one Verify per ask, no VerifyBatch, and each answer (claims, or error
    class, code and reason) is the unary Verify's."""
    asks, reasons = await mixed_asks(sidecar)
    async with AsyncAuthClient(sidecar.unix_target) as unary:
        expected = await unary_outcomes(unary, asks)
    batching = Batching(True, sidecar.unix_target, max_in_flight=1)
    outcomes = [(await batching.verify_all([ask]))[0] for ask in asks]
    together = await batching.verify_all(asks)
    await batching.close()
    assert outcomes == expected
    assert reasons_of(outcomes) == reasons
    # Callers that wait together still share one VerifyBatch, answered as Verify would.
    assert together == expected
    assert batching.counted.verifies == len(asks)
    assert batching.counted.batch_sizes == [len(asks)]


@AIO
async def test_more_callers_than_max_batch_take_several_calls_none_over_it(
    sidecar: RunningSidecar, aio: bool
) -> None:
    token = await mint(sidecar)
    batching = Batching(aio, sidecar.unix_target, max_batch=8, max_delay_s=0.05)
    outcomes = await batching.verify_all([Ask(token, "svc-b")] * 50)
    await batching.close()
    assert all(isinstance(o, VerifiedClaims) and o.sub == "alice" for o in outcomes)
    sizes = batching.counted.batch_sizes
    assert sum(sizes) == 50 and max(sizes) <= 8 and len(sizes) >= 7, sizes


@AIO
async def test_a_batch_over_the_sidecar_cap_fails_each_of_its_callers(
    data_dir: Path, aio: bool
) -> None:
    async with running_sidecar(data_dir, tokens={**AUDIENCES, "max_verify_batch": 3}) as sc:
        token = await mint(sc)
        batching = Batching(aio, sc.unix_target, max_batch=6, max_delay_s=0.05)
        outcomes = await batching.verify_all([Ask(token, "svc-b")] * 6)
        await batching.close()
    too_many = (InvalidRequestError, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    assert outcomes == [too_many] * 6
    assert batching.counted.batch_sizes == [6]


@AIO
async def test_a_stopped_sidecar_fails_every_caller_promptly_with_unavailable(
    data_dir: Path, aio: bool
) -> None:
    async with running_sidecar(data_dir, tokens=AUDIENCES) as sc:
        token = await mint(sc)
        batching = Batching(aio, sc.unix_target, timeout_s=60.0, max_delay_s=0.01)
        assert isinstance((await batching.verify_all([Ask(token, "svc-b")]))[0], VerifiedClaims)
    started = time.monotonic()
    outcomes = await asyncio.wait_for(batching.verify_all([Ask(token, "svc-b")] * 20), 90)
    elapsed = time.monotonic() - started
    await batching.close()
    # UNAVAILABLE, not DEADLINE_EXCEEDED: grpc's retries gave up, nobody waited the deadline
    # out; and well before it (half a 60 s deadline: a bound no loaded machine comes near).
    assert outcomes == [UNAVAILABLE] * 20
    assert elapsed < 30.0


@AIO
async def test_an_unavailable_batch_is_retried_as_verify_is(
    sidecar: RunningSidecar, socket_dir: Path, aio: bool
) -> None:
    token = await mint(sidecar)
    async with sidecar_proxy(sidecar.unix_target, socket_dir) as flaky:
        flaky.fail_first = {"VerifyBatch": 2}
        batching = Batching(aio, flaky.target, max_delay_s=0.05)
        outcomes = await batching.verify_all([Ask(token, "svc-b")] * 5)
        await batching.close()
    assert all(isinstance(o, VerifiedClaims) for o in outcomes)
    assert batching.counted.batch_sizes == [5]
    assert flaky.attempts["VerifyBatch"] == 3


@AIO
async def test_each_caller_keeps_its_own_deadline(
    sidecar: RunningSidecar, socket_dir: Path, aio: bool
) -> None:
    token = await mint(sidecar)
    hurried = Ask(token, "svc-b", timeout_s=0.1)
    async with sidecar_proxy(sidecar.unix_target, socket_dir) as slow:
        slow.delay_s = 0.5
        async with AsyncAuthClient(slow.target) as unary:
            expected = await unary_outcomes(unary, [hurried])
        batching = Batching(aio, slow.target, max_delay_s=0.05)
        outcomes = await batching.verify_all([hurried] + [Ask(token, "svc-b")] * 3)
        await batching.close()
    late = (SidecarUnavailableError, grpc.StatusCode.DEADLINE_EXCEEDED, "")
    assert expected == [late] and outcomes[0] == late
    # Its batch-mates had 5 s: the one call they shared ran to the latest deadline.
    assert all(isinstance(o, VerifiedClaims) for o in outcomes[1:])
    assert batching.counted.batch_sizes == [4]


async def test_a_cancelled_caller_leaves_the_others_answered(
    sidecar: RunningSidecar, socket_dir: Path
) -> None:
    token = await mint(sidecar)

    async def cancel_one(
        batching: Batching, ready: Callable[[], Awaitable[None]], release: Callable[[], None]
    ) -> list[object]:
        batcher = batching.batcher
        assert isinstance(batcher, AsyncVerifyBatcher)
        tasks = [asyncio.create_task(batcher.verify(token, audience="svc-b")) for _ in range(10)]
        await ready()
        tasks[3].cancel()
        release()
        gathered = asyncio.gather(*tasks, return_exceptions=True)
        done: list[object] = list(await asyncio.wait_for(gathered, 10))
        assert (await batcher.verify(token, audience="svc-b")).sub == "alice"
        await batching.close()
        return done

    # Cancelled while waiting to be sent: its item is left out of the call.
    waiting = Batching(True, sidecar.unix_target, max_delay_s=0.2)
    done = await cancel_one(waiting, lambda: asyncio.sleep(0.02), lambda: None)
    assert waiting.counted.batch_sizes == [9, 1]
    # Cancelled while its call is in flight (the "sidecar" holds it until the cancel): the
    # others still get their answers.
    async with sidecar_proxy(sidecar.unix_target, socket_dir) as slow:
        slow.hold = asyncio.Event()
        in_flight = Batching(True, slow.target)

        async def sent() -> None:
            await eventually(lambda: slow.attempts["VerifyBatch"] >= 1, "the batch in flight")

        done += await cancel_one(in_flight, sent, slow.hold.set)
    assert in_flight.counted.batch_sizes == [10, 1]
    for i, result in enumerate(done):
        assert isinstance(result, asyncio.CancelledError if i % 10 == 3 else VerifiedClaims)


@AIO
async def test_close_sends_what_waits_then_refuses_new_callers(
    sidecar: RunningSidecar, aio: bool
) -> None:
    token = await mint(sidecar)
    batching = Batching(aio, sidecar.unix_target, max_delay_s=30.0)
    waiting = asyncio.ensure_future(batching.verify_all([Ask(token, "svc-b")] * 3))
    await asyncio.sleep(0.2)
    assert batching.counted.batch_sizes == []  # all three wait for the 30 s delay
    started = time.monotonic()
    await batching.close()
    outcomes = await asyncio.wait_for(waiting, 5)
    assert time.monotonic() - started < 5.0
    assert all(isinstance(o, VerifiedClaims) for o in outcomes)
    assert batching.counted.batch_sizes == [3]
    with pytest.raises(RuntimeError):
        batcher = batching.batcher
        if isinstance(batcher, AsyncVerifyBatcher):
            await batcher.verify(token)
        else:
            batcher.verify(token)


async def test_max_batch_stays_within_the_sidecar_default_cap() -> None:
    async with AsyncAuthClient("unix:/nonexistent.sock") as client:
        for bad in (0, 257):
            with pytest.raises(ValueError):
                AsyncVerifyBatcher(client, max_batch=bad)
        assert AsyncVerifyBatcher(client, max_batch=256).max_batch == 256
    with AuthClient("unix:/nonexistent.sock") as sync_client:
        with pytest.raises(ValueError):
            VerifyBatcher(sync_client, max_delay_s=-1)
        with pytest.raises(ValueError):
            VerifyBatcher(sync_client, max_in_flight=0)
    async with AsyncAuthClient("unix:/nonexistent.sock") as client:
        with pytest.raises(ValueError):
            AsyncVerifyBatcher(client, max_in_flight=0)


@contextlib.asynccontextmanager
async def service_verifying_in_batches(aio: bool, sidecar_target: str) -> AsyncIterator[str]:
    """Service B whose server interceptor verifies through a batcher; yields its address."""
    policy = AuthPolicy(audience="svc-b")
    if aio:
        client = AsyncAuthClient(sidecar_target)
        # Each test call opens its own channel, so calls arrive over several loop turns:
        # a short delay gathers them (the default, 0, batches only what arrives together).
        batcher = AsyncVerifyBatcher(client, max_delay_s=0.02)
        interceptor = AsyncAuthServerInterceptor(batcher, policy)
        server = grpc.aio.server(interceptors=[interceptor])
        server.add_generic_rpc_handlers((services.handler(aio=True),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            yield f"127.0.0.1:{port}"
        finally:
            await server.stop(None)
            await interceptor.aclose()
            await batcher.close()
            await client.close()
        return
    sync_client = AuthClient(sidecar_target)
    sync_batcher = VerifyBatcher(sync_client, max_delay_s=0.02)
    sync_interceptor = AuthServerInterceptor(sync_batcher, policy)
    sync_server = grpc.server(ThreadPoolExecutor(max_workers=16), interceptors=[sync_interceptor])
    sync_server.add_generic_rpc_handlers((services.handler(aio=False),))
    port = sync_server.add_insecure_port("127.0.0.1:0")
    sync_server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await asyncio.to_thread(lambda: sync_server.stop(None).wait())
        await asyncio.to_thread(sync_interceptor.close)
        await asyncio.to_thread(sync_batcher.close)
        sync_client.close()


@AIO
async def test_server_interceptor_verifies_through_a_batcher(
    sidecar: RunningSidecar, socket_dir: Path, aio: bool
) -> None:
    token = await mint(sidecar)
    async with sidecar_proxy(sidecar.unix_target, socket_dir) as counted:
        async with service_verifying_in_batches(aio, counted.target) as b:
            calls = [call_b(aio, b, StaticTokenSource(token), "Whoami") for _ in range(12)]
            outcomes = await asyncio.gather(*calls)
            batches = counted.attempts["VerifyBatch"]
            refused = await call_b(aio, b, StaticTokenSource("x.y.z"), "Whoami")
    assert {(o.code, tuple(o.messages)) for o in outcomes} == {(OK, (b"alice",))}
    assert (refused.code, refused.reason) == (UNAUTHENTICATED, "TOKEN_MALFORMED")
    assert counted.attempts["Verify"] == 0
    assert 1 <= batches < 12
