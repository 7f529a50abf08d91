"""End to end: the interceptors' decision cache against the REAL sidecar's Watch stream.

Service B (sync or asyncio) reaches a real sidecar through tests/client/proxy.py, a real
gRPC proxy that counts round trips (Verify + VerifyBatch) and can cut the Watch stream.
Revocations are made with Revoke and key retirements by removing a key file, as an operator
would; nothing is pushed by the test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from authsidecar.client import AuthPolicy, StaticTokenSource
from authsidecar.v1 import auth_pb2
from sidecar.keys.keyset import write_manifest
from tests.client.harness import OK, UNAUTHENTICATED, Callee, Outcome, call_b, callee
from tests.client.proxy import SidecarProxy, sidecar_proxy
from tests.client.tokens import mint
from tests.support.keys import write_jwk_file
from tests.support.marks import AIO
from tests.support.polling import eventually
from tests.support.sidecar import RunningSidecar, running_sidecar

POLICY = AuthPolicy(audience="svc-b")
AUDIENCES = {"audiences": ["svc-a", "svc-b"]}


def round_trips(proxy: SidecarProxy) -> int:
    return proxy.attempts["Verify"] + proxy.attempts["VerifyBatch"]


@asynccontextmanager
async def watched(
    aio: bool, sidecar: RunningSidecar, socket_dir: Path, **options: Any
) -> AsyncIterator[tuple[SidecarProxy, Callee]]:
    """Service B behind a counting proxy to the real sidecar, current before it is used."""
    async with sidecar_proxy(sidecar.unix_target, socket_dir) as proxy:
        options.setdefault("now", sidecar.clock.now)
        async with callee(aio, proxy.target, POLICY, **options) as b:
            if aio:  # the asyncio watcher starts with the first call on the server's loop
                await call_b(aio, b.target, None, "Public")
            await eventually(lambda: b.interceptor.stats().current)
            yield proxy, b


async def whoami(aio: bool, b: Callee, token: str) -> Outcome:
    return await call_b(aio, b.target, StaticTokenSource(token), "Whoami")


@asynccontextmanager
async def key_rotating_sidecar(
    data_dir: Path,
) -> AsyncIterator[tuple[RunningSidecar, Callable[[], Awaitable[None]]]]:
    """A sidecar reading its keys from a directory, k1 signing, and `retire_k1()`, which
    does what an operator does: add k2 and make it sign, then remove k1's file."""
    keys = data_dir / "keyset"
    keys.mkdir()
    write_jwk_file(keys, "ES256", "k1")
    write_manifest(keys, "k1", 0)
    settings = {"directory": str(keys), "reload_interval_s": 0.05}
    async with running_sidecar(data_dir, keys=settings, tokens=AUDIENCES) as sc:
        service = sc.app.service

        async def retire_k1() -> None:
            write_jwk_file(keys, "ES256", "k2")
            write_manifest(keys, "k2", 0)
            await eventually(lambda: "k2" in service.ring)
            await eventually(lambda: getattr(service.ring.signing_key, "kid", "") == "k2")
            (keys / "k1.jwk.json").unlink()
            await eventually(lambda: "k1" not in service.ring)

        yield sc, retire_k1


@AIO
async def test_a_revoked_token_is_refused_at_a_callee_that_had_cached_it(
    sidecar: RunningSidecar, socket_dir: Path, aio: bool
) -> None:
    token, other = await mint(sidecar), await mint(sidecar, sub="bob")
    async with watched(aio, sidecar, socket_dir) as (proxy, b):
        for _ in range(2):
            assert (await whoami(aio, b, token)).code == OK
            assert (await whoami(aio, b, other)).code == OK
        assert round_trips(proxy) == 2 and b.interceptor.stats().hits == 2
        await sidecar.public.Revoke(auth_pb2.RevokeRequest(token=token))
        await eventually(lambda: b.interceptor.stats().invalidations["token_revoked"] >= 1)
        refused = await whoami(aio, b, token)
        still = await whoami(aio, b, other)
        stats = b.interceptor.stats()
    assert (refused.code, refused.reason) == (UNAUTHENTICATED, "TOKEN_REVOKED")
    assert (still.code, still.messages, stats.hits) == (OK, [b"bob"], 3)


@AIO
async def test_a_retired_key_voids_the_decisions_made_with_it(
    data_dir: Path, socket_dir: Path, aio: bool
) -> None:
    async with key_rotating_sidecar(data_dir) as (sc, retire_k1):
        old = await mint(sc)
        async with watched(aio, sc, socket_dir) as (proxy, b):
            assert (await whoami(aio, b, old)).code == OK
            assert (await whoami(aio, b, old)).code == OK
            await retire_k1()
            await eventually(lambda: b.interceptor.stats().invalidations["key_retired"] >= 1)
            refused = await whoami(aio, b, old)
            fresh = await whoami(aio, b, await mint(sc))
    assert (refused.code, refused.reason) == (UNAUTHENTICATED, "KEY_UNKNOWN")
    assert fresh.code == OK


@AIO
async def test_a_cut_stream_falls_back_to_verify_and_caching_resumes_after_resync(
    sidecar: RunningSidecar, socket_dir: Path, aio: bool
) -> None:
    kept, revoked = await mint(sidecar), await mint(sidecar, sub="bob")
    async with watched(aio, sidecar, socket_dir) as (proxy, b):
        await whoami(aio, b, kept)
        await whoami(aio, b, revoked)
        proxy.block_watch = True
        proxy.cut_streams()
        await eventually(lambda: not b.interceptor.stats().current)
        before = round_trips(proxy)
        during = [await whoami(aio, b, kept) for _ in range(2)]
        verified_during = round_trips(proxy) - before
        await sidecar.public.Revoke(auth_pb2.RevokeRequest(token=revoked))
        refused_during = await whoami(aio, b, revoked)
        proxy.block_watch = False
        await eventually(lambda: b.interceptor.stats().current)
        after_resync = round_trips(proxy)
        resumed = [await whoami(aio, b, kept) for _ in range(2)]
        refused_after = await whoami(aio, b, revoked)
    assert [o.code for o in during] == [OK, OK]
    assert verified_during == 2  # no stale hit: each call went to the sidecar
    assert (refused_during.code, refused_during.reason) == (UNAUTHENTICATED, "TOKEN_REVOKED")
    assert [o.code for o in resumed] == [OK, OK]
    assert (refused_after.code, refused_after.reason) == (UNAUTHENTICATED, "TOKEN_REVOKED")
    # After the resync one call re-cached `kept` (at most), the next was a hit; the revoked
    # token, refused by Verify, was never cached (two round trips: the client retries once).
    assert round_trips(proxy) - after_resync <= 1 + 2


@AIO
async def test_a_token_past_exp_is_never_served_from_the_cache(
    sidecar: RunningSidecar, socket_dir: Path, aio: bool
) -> None:
    token = await mint(sidecar, ttl_s=60)
    async with watched(aio, sidecar, socket_dir) as (proxy, b):
        await whoami(aio, b, token)
        await whoami(aio, b, token)
        assert round_trips(proxy) == 1
        sidecar.clock.advance(60)  # exactly exp: only the sidecar's leeway may accept it
        at_exp = await whoami(aio, b, token)
        trips_at_exp = round_trips(proxy)
        sidecar.clock.advance(sidecar.settings.tokens.leeway_s + 1)
        expired = await whoami(aio, b, token)
    assert at_exp.code == OK and trips_at_exp == 2  # asked the sidecar, no hit
    assert (expired.code, expired.reason) == (UNAUTHENTICATED, "TOKEN_EXPIRED")
