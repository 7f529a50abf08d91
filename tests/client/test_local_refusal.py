"""A revoked cached decision is refused at the callee, without asking the sidecar again.

When a TokenRevoked or FamilyRevoked event voids a decision a callee holds, the callee keeps
a refusal in its place until the token's `exp` (`_decisions.py`): the sidecar's Verify,
which checks everything else before revocation, can only answer TOKEN_REVOKED for that
exact token and requirements meanwhile. These tests hold that refusal to the sidecar's own,
byte for byte, and pin where it must not be served (past `exp`, after KeyRetired, while the
stream is not current).

Service B (sync or asyncio) reaches the REAL sidecar through tests/client/proxy.py, which
counts round trips (Verify + VerifyBatch); revocations are made with Revoke and key
retirement by removing a key file, as an operator would. The reference answers come from
the same service built with `cache_decisions=False` (through VerifyBatch, and with
`coalesce_misses=False` through Verify).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from authsidecar.v1 import auth_pb2
from tests.client import services
from tests.client.harness import OK, UNAUTHENTICATED, Callee, callee
from tests.client.proxy import SidecarProxy
from tests.client.test_watch_sidecar import POLICY, key_rotating_sidecar, round_trips, watched
from tests.client.tokens import mint
from tests.support.marks import AIO
from tests.support.polling import eventually
from tests.support.sidecar import RunningSidecar

STATUS_DETAILS = "grpc-status-details-bin"


@dataclass(frozen=True)
class Answer:
    """Everything a caller receives in a refusal: code, message, and the status details
    (ErrorInfo) exactly as the bytes on the wire."""

    code: grpc.StatusCode
    details: str | None = None
    status_details: bytes | None = None


async def answer(b: Callee, token: str) -> Answer:
    """Call B's Whoami with the token in the header (no client interceptor: its one retry on
    UNAUTHENTICATED would be a second call and blur the round-trip counts)."""
    async with grpc.aio.insecure_channel(b.target) as channel:
        whoami: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            services.method("Whoami")
        )
        try:
            await whoami(b"2", metadata=(("authorization", f"Bearer {token}"),), timeout=10)
        except grpc.aio.AioRpcError as error:
            sent = [v for k, v in error.trailing_metadata() or () if k == STATUS_DETAILS]
            assert len(sent) <= 1
            status_details = sent[0] if sent else None
            assert status_details is None or isinstance(status_details, bytes)
            return Answer(error.code(), error.details(), status_details)
    return Answer(OK)


@asynccontextmanager
async def references(aio: bool, proxy: SidecarProxy) -> AsyncIterator[tuple[Callee, Callee]]:
    """Service B without a decision cache: through VerifyBatch (the default misses path) and
    through Verify, both behind the same counting proxy."""
    async with AsyncExitStack() as stack:
        batched = await stack.enter_async_context(
            callee(aio, proxy.target, POLICY, cache_decisions=False)
        )
        single = await stack.enter_async_context(
            callee(aio, proxy.target, POLICY, cache_decisions=False, coalesce_misses=False)
        )
        yield batched, single


async def refused_locally(b: Callee, proxy: SidecarProxy, token: str) -> Answer:
    """B's answer, asserting it was given without a round trip to the sidecar."""
    before, locally = round_trips(proxy), b.interceptor.stats().refused_locally
    got = await answer(b, token)
    assert round_trips(proxy) == before, "the callee asked the sidecar"
    assert b.interceptor.stats().refused_locally == locally + 1
    return got


async def asked_the_sidecar(b: Callee, proxy: SidecarProxy, token: str) -> Answer:
    """B's answer, asserting it came from the sidecar (one round trip, no local refusal)."""
    before, locally = round_trips(proxy), b.interceptor.stats().refused_locally
    got = await answer(b, token)
    assert round_trips(proxy) == before + 1
    assert b.interceptor.stats().refused_locally == locally
    return got


@AIO
async def test_a_revoked_cached_token_is_refused_without_verify_exactly_as_the_sidecar_refuses(
    sidecar: RunningSidecar, socket_dir: Path, aio: bool
) -> None:
    token, other = await mint(sidecar), await mint(sidecar, sub="bob")
    async with watched(aio, sidecar, socket_dir) as (proxy, b), references(aio, proxy) as refs:
        for _ in range(2):
            assert (await answer(b, token)).code == OK
            assert (await answer(b, other)).code == OK
        await sidecar.public.Revoke(auth_pb2.RevokeRequest(token=token))
        await eventually(lambda: b.interceptor.stats().invalidations["token_revoked"] >= 1)
        local = await refused_locally(b, proxy, token)
        again = await refused_locally(b, proxy, token)
        by_batch, by_verify = [await answer(ref, token) for ref in refs]
        still = await answer(b, other)
        stats = b.interceptor.stats()
    assert local.code == UNAUTHENTICATED and local.status_details
    assert local == again == by_batch == by_verify
    assert still.code == OK
    assert (stats.refused_locally, stats.tombstones, stats.dropped) == (2, 1, 1)


@AIO
async def test_a_revoked_family_refuses_its_cached_access_token_without_verify(
    sidecar: RunningSidecar, socket_dir: Path, aio: bool
) -> None:
    grant = await sidecar.admin.Issue(
        auth_pb2.IssueRequest(subject="alice", audience=["svc-b"], refresh_token=True)
    )
    async with watched(aio, sidecar, socket_dir) as (proxy, b), references(aio, proxy) as refs:
        for _ in range(2):
            assert (await answer(b, grant.access_token)).code == OK
        await sidecar.public.Revoke(auth_pb2.RevokeRequest(token=grant.refresh_token))
        await eventually(lambda: b.interceptor.stats().invalidations["family_revoked"] >= 1)
        local = await refused_locally(b, proxy, grant.access_token)
        by_batch, by_verify = [await answer(ref, grant.access_token) for ref in refs]
    assert local.code == UNAUTHENTICATED and local == by_batch == by_verify


@AIO
async def test_past_exp_the_refusal_is_not_served_and_verify_decides(
    sidecar: RunningSidecar, socket_dir: Path, aio: bool
) -> None:
    token = await mint(sidecar, ttl_s=60)
    async with watched(aio, sidecar, socket_dir) as (proxy, b), references(aio, proxy) as refs:
        await answer(b, token)
        await sidecar.public.Revoke(auth_pb2.RevokeRequest(token=token))
        await eventually(lambda: b.interceptor.stats().invalidations["token_revoked"] >= 1)
        before_exp = await refused_locally(b, proxy, token)
        sidecar.clock.advance(60)  # exactly exp (the callee's clock is the sidecar's)
        at_exp = await asked_the_sidecar(b, proxy, token)
        sidecar.clock.advance(sidecar.settings.tokens.leeway_s + 1)
        expired = await asked_the_sidecar(b, proxy, token)
        expired_ref = await answer(refs[0], token)
        stats = b.interceptor.stats()
    # Within the sidecar's leeway Verify still says revoked; past it, expired: its answer.
    assert before_exp == at_exp
    assert expired == expired_ref and expired != at_exp and expired.code == UNAUTHENTICATED
    assert (stats.tombstones, stats.expirations) == (0, 1)


@AIO
async def test_a_retired_key_drops_the_refusal_and_verify_answers_key_unknown(
    data_dir: Path, socket_dir: Path, aio: bool
) -> None:
    async with key_rotating_sidecar(data_dir) as (sc, retire_k1):
        old = await mint(sc)
        async with watched(aio, sc, socket_dir) as (proxy, b), references(aio, proxy) as refs:
            await answer(b, old)
            await sc.public.Revoke(auth_pb2.RevokeRequest(token=old))
            await eventually(lambda: b.interceptor.stats().invalidations["token_revoked"] >= 1)
            revoked = await refused_locally(b, proxy, old)
            await retire_k1()
            await eventually(lambda: b.interceptor.stats().invalidations["key_retired"] >= 1)
            unknown = await asked_the_sidecar(b, proxy, old)
            unknown_ref = await answer(refs[1], old)
            stats = b.interceptor.stats()
    assert revoked.code == unknown.code == UNAUTHENTICATED
    assert unknown == unknown_ref and unknown != revoked  # KEY_UNKNOWN, the sidecar's word
    assert (stats.tombstones, stats.entries) == (0, 0)


@AIO
async def test_while_the_stream_is_not_current_verify_answers_and_the_refusal_resumes_after(
    sidecar: RunningSidecar, socket_dir: Path, aio: bool
) -> None:
    token = await mint(sidecar)
    async with watched(aio, sidecar, socket_dir) as (proxy, b):
        await answer(b, token)
        await sidecar.public.Revoke(auth_pb2.RevokeRequest(token=token))
        await eventually(lambda: b.interceptor.stats().invalidations["token_revoked"] >= 1)
        local = await refused_locally(b, proxy, token)
        proxy.block_watch = True
        proxy.cut_streams()
        await eventually(lambda: not b.interceptor.stats().current)
        during = await asked_the_sidecar(b, proxy, token)
        proxy.block_watch = False
        await eventually(lambda: b.interceptor.stats().current)
        after = await refused_locally(b, proxy, token)  # resumed: the refusal was kept
    assert local == during == after
