"""The server interceptors' decision cache, kept by a Watch stream, sync and asyncio.

Service B runs the real interceptor against `FakeWatchSidecar` (tests/client/watch_fake.py):
Watch there is a test-driven fake of our own protocol, while Verify and VerifyBatch go to a
real sidecar. Revocations are made at the real sidecar first and pushed afterwards, which is
the order auth.proto guarantees. "Round trips" are the Verify and VerifyBatch calls the fake
forwarded.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc

from authsidecar.client import (
    AsyncAuthClient,
    AsyncVerifyBatcher,
    AuthClient,
    AuthPolicy,
    StaticTokenSource,
    VerifyBatcher,
)
from authsidecar.v1 import auth_pb2
from tests.client.harness import OK, UNAUTHENTICATED, Callee, Outcome, call_b, callee
from tests.client.tokens import mint
from tests.client.watch_fake import FakeWatchSidecar, fake_watch_sidecar
from tests.support.marks import AIO
from tests.support.polling import eventually
from tests.support.sidecar import RunningSidecar

POLICY = AuthPolicy(audience="svc-b")


def round_trips(fake: FakeWatchSidecar) -> int:
    return fake.attempts["Verify"] + fake.attempts["VerifyBatch"]


@asynccontextmanager
async def watched(
    aio: bool, sidecar: RunningSidecar, socket_dir: Path, **options: Any
) -> AsyncIterator[tuple[FakeWatchSidecar, Callee]]:
    """Service B behind the fake Watch, current before the test starts."""
    async with fake_watch_sidecar(sidecar.unix_target, socket_dir) as fake:
        options.setdefault("now", sidecar.clock.now)
        # Healthy streams must not lapse on a loaded machine (the fake beats every 50 ms; 3x
        # that is the default bound): the round-trip counts below pin when the sidecar is
        # asked, so only the lapses a test makes (a cut, silence) may bypass the cache.
        options.setdefault("staleness_s", 2.0)
        async with callee(aio, fake.target, POLICY, **options) as b:
            if aio:  # the asyncio watcher starts with the first call on the server's loop
                await call_b(aio, b.target, None, "Public")
            await eventually(lambda: b.interceptor.stats().current)
            yield fake, b


async def whoami(aio: bool, b: Callee, token: str) -> Outcome:
    return await call_b(aio, b.target, StaticTokenSource(token), "Whoami")


async def identity(sidecar: RunningSidecar, token: str) -> auth_pb2.VerifyResponse:
    return await sidecar.public.Verify(auth_pb2.VerifyRequest(token=token))


@AIO
async def test_repeat_calls_skip_the_sidecar_while_the_stream_is_current(
    sidecar: RunningSidecar, socket_dir: Path, aio: bool
) -> None:
    token = await mint(sidecar)
    async with watched(aio, sidecar, socket_dir) as (fake, b):
        outcomes = [await whoami(aio, b, token) for _ in range(4)]
        stats = b.interceptor.stats()
    assert {(o.code, tuple(o.messages)) for o in outcomes} == {(OK, (b"alice",))}
    assert round_trips(fake) == 1
    assert (stats.hits, stats.misses, stats.stored, stats.entries) == (3, 1, 1, 1)


@AIO
async def test_a_pushed_revocation_refuses_the_token_the_callee_had_cached(
    sidecar: RunningSidecar, socket_dir: Path, aio: bool
) -> None:
    token = await mint(sidecar)
    other = await mint(sidecar, sub="bob")
    revoked = await identity(sidecar, token)
    async with watched(aio, sidecar, socket_dir) as (fake, b):
        assert (await whoami(aio, b, token)).code == OK
        assert (await whoami(aio, b, other)).code == OK
        await sidecar.public.Revoke(auth_pb2.RevokeRequest(token=token))
        # Until the event arrives the callee still holds the decision: the push delay.
        assert (await whoami(aio, b, token)).code == OK
        fake.revoke_token(revoked.iss, revoked.jti)
        await eventually(lambda: b.interceptor.stats().invalidations["token_revoked"] == 1)
        refused = await whoami(aio, b, token)
        still = await whoami(aio, b, other)
        stats = b.interceptor.stats()
    assert (refused.code, refused.reason) == (UNAUTHENTICATED, "TOKEN_REVOKED")
    assert (still.code, still.messages) == (OK, [b"bob"])
    assert stats.dropped == 1 and stats.hits == 2


@AIO
async def test_an_answer_voided_while_it_was_on_its_way_is_not_cached(
    sidecar: RunningSidecar, socket_dir: Path, aio: bool
) -> None:
    token = await mint(sidecar)
    revoked = await identity(sidecar, token)
    async with watched(aio, sidecar, socket_dir) as (fake, b):
        fake.reply_delay_s = 0.5
        in_flight = asyncio.create_task(whoami(aio, b, token))
        await eventually(lambda: fake.answered == 1)  # the sidecar said OK...
        await sidecar.public.Revoke(auth_pb2.RevokeRequest(token=token))
        fake.revoke_token(revoked.iss, revoked.jti)  # ...and the event overtook the answer
        await eventually(lambda: b.interceptor.stats().invalidations["token_revoked"] == 1)
        answered = await in_flight
        fake.reply_delay_s = 0.0
        after = await whoami(aio, b, token)
        stats = b.interceptor.stats()
    assert answered.code == OK  # what the sidecar decided when it was asked
    assert (after.code, after.reason) == (UNAUTHENTICATED, "TOKEN_REVOKED")  # not a stale hit
    assert (stats.stored, stats.not_stored, stats.hits) == (0, 1, 0)


@AIO
async def test_a_revoked_family_refuses_its_cached_access_tokens(
    sidecar: RunningSidecar, socket_dir: Path, aio: bool
) -> None:
    grant = await sidecar.admin.Issue(
        auth_pb2.IssueRequest(subject="alice", audience=["svc-b"], refresh_token=True)
    )
    member = await identity(sidecar, grant.access_token)
    sid = member.claims.fields["sid"].string_value
    async with watched(aio, sidecar, socket_dir) as (fake, b):
        assert (await whoami(aio, b, grant.access_token)).code == OK
        await sidecar.public.Revoke(auth_pb2.RevokeRequest(token=grant.refresh_token))
        fake.revoke_family(member.iss, sid)
        await eventually(lambda: b.interceptor.stats().invalidations["family_revoked"] == 1)
        refused = await whoami(aio, b, grant.access_token)
    assert sid and (refused.code, refused.reason) == (UNAUTHENTICATED, "TOKEN_REVOKED")


@AIO
async def test_a_retired_key_voids_the_decisions_made_with_it(
    sidecar: RunningSidecar, socket_dir: Path, aio: bool
) -> None:
    token = await mint(sidecar)
    kid = (await identity(sidecar, token)).kid
    async with watched(aio, sidecar, socket_dir) as (fake, b):
        await whoami(aio, b, token)
        await whoami(aio, b, token)
        assert round_trips(fake) == 1
        fake.retire_key("some-other-kid")
        fake.retire_key(kid)
        await eventually(lambda: b.interceptor.stats().invalidations["key_retired"] == 2)
        # The fake's sidecar still accepts the key: the decision is simply asked again.
        again = await whoami(aio, b, token)
    assert again.code == OK and round_trips(fake) == 2


@AIO
async def test_a_silent_stream_serves_no_hits_until_messages_flow_again(
    sidecar: RunningSidecar, socket_dir: Path, aio: bool
) -> None:
    token = await mint(sidecar)
    async with watched(aio, sidecar, socket_dir) as (fake, b):
        await whoami(aio, b, token)
        fake.heartbeats = False  # the stream stays open but says nothing...
        fake.refuse = grpc.StatusCode.UNAVAILABLE  # ...and resubscribing fails
        await eventually(lambda: not b.interceptor.stats().current)
        silent = [await whoami(aio, b, token) for _ in range(2)]
        during = round_trips(fake)
        fake.heartbeats, fake.refuse = True, None
        await eventually(lambda: b.interceptor.stats().current)
        await whoami(aio, b, token)
        stats = b.interceptor.stats()
    assert [o.code for o in silent] == [OK, OK]
    assert during == 3  # the first call, then both silent ones went to the sidecar
    assert round_trips(fake) == 3  # the decision kept through the lapse is served again
    assert stats.bypassed >= 2


@AIO
async def test_a_stream_silent_past_the_read_timeout_is_cut_and_resubscribed(
    sidecar: RunningSidecar, socket_dir: Path, aio: bool
) -> None:
    async with watched(aio, sidecar, socket_dir, staleness_s=0.5) as (fake, b):
        before = b.interceptor.stats().subscriptions
        fake.heartbeats = False  # the stream stays open: only the watcher's timer can end it
        await eventually(lambda: b.interceptor.stats().subscriptions > before)
        fake.heartbeats = True
        await eventually(lambda: b.interceptor.stats().current)


@AIO
async def test_a_cut_stream_falls_back_to_verify_and_replays_what_it_missed(
    sidecar: RunningSidecar, socket_dir: Path, aio: bool
) -> None:
    kept, revoked_token = await mint(sidecar), await mint(sidecar, sub="bob")
    revoked = await identity(sidecar, revoked_token)
    async with watched(aio, sidecar, socket_dir) as (fake, b):
        fake.retire_key("unrelated")  # sequence 1, applied before the cut
        await eventually(lambda: b.interceptor.stats().invalidations["key_retired"] == 1)
        await whoami(aio, b, kept)
        await whoami(aio, b, revoked_token)
        fake.refuse = grpc.StatusCode.UNAVAILABLE
        fake.cut()
        await eventually(lambda: not b.interceptor.stats().current)
        await sidecar.public.Revoke(auth_pb2.RevokeRequest(token=revoked_token))
        fake.revoke_token(revoked.iss, revoked.jti)  # logged while nobody listens
        during_cut = await whoami(aio, b, revoked_token)  # asks the sidecar: refused
        trips_during = round_trips(fake)
        fake.refuse = None
        await eventually(lambda: b.interceptor.stats().current)
        after = await whoami(aio, b, revoked_token)
        resumed = await whoami(aio, b, kept)
        stats = b.interceptor.stats()
    assert (during_cut.code, during_cut.reason) == (UNAUTHENTICATED, "TOKEN_REVOKED")
    assert trips_during == 4  # two misses, then the refused call and the client's retry
    assert (after.code, after.reason) == (UNAUTHENTICATED, "TOKEN_REVOKED")
    assert resumed.code == OK
    resumes = [r for r in fake.requests if r.epoch]
    assert resumes and resumes[-1] == auth_pb2.WatchRequest(epoch="epoch-1", after_sequence=1)
    assert stats.invalidations["token_revoked"] == 1  # replayed after the sync
    # After the resync nothing asked the sidecar: the replayed event left a refusal in place
    # of `revoked`'s decision (both attempts refused locally), and `kept` was a hit.
    assert round_trips(fake) == 4 and stats.refused_locally == 2


@AIO
async def test_a_restarted_event_log_drops_every_decision(
    sidecar: RunningSidecar, socket_dir: Path, aio: bool
) -> None:
    token = await mint(sidecar)
    async with watched(aio, sidecar, socket_dir) as (fake, b):
        await whoami(aio, b, token)
        fake.restart("epoch-2")
        await eventually(lambda: b.interceptor.stats().invalidations["resync"] == 2)
        await eventually(lambda: b.interceptor.stats().current)
        await whoami(aio, b, token)
    assert round_trips(fake) == 2


@AIO
async def test_a_skipped_sequence_number_drops_every_decision(
    sidecar: RunningSidecar, socket_dir: Path, aio: bool
) -> None:
    token = await mint(sidecar)
    async with watched(aio, sidecar, socket_dir) as (fake, b):
        await whoami(aio, b, token)
        fake.sequence += 1  # number 1 is never sent
        fake.retire_key("unrelated")
        await eventually(lambda: b.interceptor.stats().invalidations["gap"] == 1)
        await whoami(aio, b, token)
    assert round_trips(fake) == 2


@AIO
async def test_a_token_past_exp_is_never_served_from_the_cache(
    sidecar: RunningSidecar, socket_dir: Path, aio: bool
) -> None:
    token = await mint(sidecar, ttl_s=60)
    async with watched(aio, sidecar, socket_dir) as (fake, b):
        await whoami(aio, b, token)
        await whoami(aio, b, token)
        assert round_trips(fake) == 1
        sidecar.clock.advance(60)  # exactly exp: the sidecar's leeway may still accept it
        at_exp = await whoami(aio, b, token)
        trips_at_exp = round_trips(fake)
        sidecar.clock.advance(sidecar.settings.tokens.leeway_s + 1)
        expired = await whoami(aio, b, token)
        stats = b.interceptor.stats()
    assert at_exp.code == OK and trips_at_exp == 2  # asked, not served from the cache
    assert (expired.code, expired.reason) == (UNAUTHENTICATED, "TOKEN_EXPIRED")
    assert stats.hits == 1 and stats.expirations == 1


@AIO
async def test_a_sidecar_without_watch_gets_every_call_verified(
    sidecar: RunningSidecar, socket_dir: Path, aio: bool
) -> None:
    token = await mint(sidecar)
    async with fake_watch_sidecar(sidecar.unix_target, socket_dir) as fake:
        fake.refuse = grpc.StatusCode.UNIMPLEMENTED
        async with callee(aio, fake.target, POLICY) as b:
            outcomes = [await whoami(aio, b, token) for _ in range(3)]
            stats = b.interceptor.stats()
    assert [o.code for o in outcomes] == [OK] * 3
    assert round_trips(fake) == 3 and fake.requests
    assert (stats.hits, stats.bypassed, stats.current) == (0, 3, False)


@AIO
async def test_turned_off_it_sends_one_verify_per_call_and_never_watches(
    sidecar: RunningSidecar, socket_dir: Path, aio: bool
) -> None:
    token = await mint(sidecar)
    async with fake_watch_sidecar(sidecar.unix_target, socket_dir) as fake:
        options = {"cache_decisions": False, "coalesce_misses": False}
        async with callee(aio, fake.target, POLICY, **options) as b:
            outcomes = [await whoami(aio, b, token) for _ in range(3)]
            stats = b.interceptor.stats()
    assert [o.code for o in outcomes] == [OK] * 3
    assert (fake.attempts["Verify"], fake.attempts["VerifyBatch"]) == (3, 0)
    assert fake.requests == [] and stats.hits == 0 and stats.bypassed == 0


@AIO
async def test_concurrent_misses_share_verify_batches(
    sidecar: RunningSidecar, socket_dir: Path, aio: bool
) -> None:
    tokens = [await mint(sidecar, sub=f"user-{i}") for i in range(16)]
    async with watched(aio, sidecar, socket_dir) as (fake, b):
        fake.delay_s = 0.5  # the first miss's batch is in flight while the others arrive
        outcomes = await asyncio.gather(*(whoami(aio, b, t) for t in tokens))
    assert [o.messages for o in outcomes] == [[f"user-{i}".encode()] for i in range(16)]
    # A miss alone in its batch goes as Verify (AsyncVerifyBatcher with max_in_flight); the
    # ones that waited together share VerifyBatch calls: fewer calls than misses.
    assert fake.attempts["VerifyBatch"] >= 1
    assert fake.attempts["Verify"] + fake.attempts["VerifyBatch"] < 16


@AIO
async def test_a_lone_miss_is_sent_at_once(
    sidecar: RunningSidecar, socket_dir: Path, aio: bool
) -> None:
    """A batcher that would wait 30 s for company sends a lone caller's item right away
    when nothing is in flight (the sync interceptor's `max_in_flight=1`; asyncio's next
    loop turn)."""
    token = await mint(sidecar)
    if aio:
        async with AsyncAuthClient(sidecar.unix_target) as client:
            batcher = AsyncVerifyBatcher(client)
            claims = await asyncio.wait_for(batcher.verify(token, audience="svc-b"), 10)
            await batcher.close()
    else:
        with AuthClient(sidecar.unix_target) as sync_client:
            sync_batcher = VerifyBatcher(sync_client, max_delay_s=30.0, max_in_flight=1)
            verify = sync_batcher.verify
            call = asyncio.to_thread(verify, token, audience="svc-b")
            claims = await asyncio.wait_for(call, 10)
            await asyncio.to_thread(sync_batcher.close)
    assert claims.sub == "alice"


@AIO
async def test_closing_the_interceptor_ends_its_watch(
    sidecar: RunningSidecar, socket_dir: Path, aio: bool
) -> None:
    def watch_threads() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name.startswith("authsidecar-watch")}

    before = watch_threads()  # other tests' interceptors may still be winding down
    async with fake_watch_sidecar(sidecar.unix_target, socket_dir) as fake:
        async with callee(aio, fake.target, POLICY) as b:
            await call_b(aio, b.target, None, "Public")
            await eventually(lambda: fake.subscribers == 1)
        await eventually(lambda: fake.subscribers == 0)
        watchers = watch_threads() - before
        tasks = [t for t in asyncio.all_tasks() if t.get_name() == "authsidecar-watch"]
    assert watchers == set() and tasks == []
