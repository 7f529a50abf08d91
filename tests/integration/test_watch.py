"""The Watch stream (issue 15) on real sidecars: real sockets, real gRPC clients, real keys.

Each event is checked against Verify's answer at the same sidecar: an event is only sent
once Verify there refuses what it voids.
"""

from __future__ import annotations

import asyncio
import signal
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from authsidecar.v1 import auth_pb2, auth_pb2_grpc
from sidecar.clock import FixedClock
from sidecar.keys.keyset import write_manifest
from sidecar.store.base import Revocation
from tests.support.fleet import fleet
from tests.support.jwks_server import ExternalIssuer, JwksServer, LocalCa
from tests.support.keys import write_jwk_file
from tests.support.polling import eventually
from tests.support.redis import RedisServer, delete_prefix, unique_prefix
from tests.support.sidecar import RunningSidecar, reason_of, running_sidecar
from tests.support.watch import WatchStream, claim_of

AUD = "svc-a"
FAST = {"heartbeat_interval_ms": 100}
REVOKED = (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_REVOKED")


@pytest.fixture
async def sc(data_dir: Path) -> AsyncIterator[RunningSidecar]:
    async with running_sidecar(
        data_dir, tokens={"audiences": [AUD], "refresh_grace_s": 0}, watch=FAST
    ) as running:
        yield running


async def issue(sc: RunningSidecar, *, refresh: bool = False) -> auth_pb2.IssueResponse:
    request = auth_pb2.IssueRequest(subject="alice", audience=[AUD], refresh_token=refresh)
    return await sc.admin.Issue(request)


async def revoke_one(sc: RunningSidecar) -> str:
    """Issue a token, revoke it over the public socket; its jti."""
    token = (await issue(sc)).access_token
    await sc.public.Revoke(auth_pb2.RevokeRequest(token=token))
    return claim_of(token, "jti")


async def verify_reason(
    sc: RunningSidecar, token: str, audience: str = AUD
) -> tuple[grpc.StatusCode, str]:
    try:
        await sc.public.Verify(auth_pb2.VerifyRequest(token=token, audience=audience))
    except grpc.aio.AioRpcError as error:
        return reason_of(error)
    return grpc.StatusCode.OK, ""


async def test_watch_starts_with_sync_carrying_reset_and_the_heartbeat_interval(
    sc: RunningSidecar,
) -> None:
    for stub in (sc.public, sc.tcp, sc.admin):
        stream = WatchStream(stub)
        first = await stream.sync()
        assert first.sync.reset is True  # a first subscription holds nothing to keep
        assert first.sync.heartbeat_interval_ms == 100
        assert first.epoch == sc.app.service.events.epoch and len(first.epoch) >= 16
        assert first.sequence == 0
        await stream.close()


async def test_revoke_sends_token_revoked_with_iss_and_jti_after_verify_refuses(
    sc: RunningSidecar,
) -> None:
    stream = WatchStream(sc.public)
    await stream.sync()
    token = (await issue(sc)).access_token
    assert await verify_reason(sc, token) == (grpc.StatusCode.OK, "")
    await sc.public.Revoke(auth_pb2.RevokeRequest(token=token))
    event = await stream.next_event()
    assert event.WhichOneof("event") == "token_revoked"
    assert event.token_revoked.iss == sc.settings.tokens.issuer
    assert event.token_revoked.jti == claim_of(token, "jti")
    assert event.sequence == 1
    assert await verify_reason(sc, token) == REVOKED
    # Revoking again changes nothing and sends nothing: the next message is a heartbeat.
    await sc.public.Revoke(auth_pb2.RevokeRequest(token=token))
    beat = await stream.next()
    assert beat.WhichOneof("event") == "heartbeat" and beat.sequence == 1
    assert (await stream.next()).WhichOneof("event") == "heartbeat"
    await stream.close()


async def test_refresh_reuse_sends_family_revoked_for_the_family(sc: RunningSidecar) -> None:
    stream = WatchStream(sc.public)
    await stream.sync()
    grant = await issue(sc, refresh=True)
    sid = claim_of(grant.refresh_token, "sid")
    await sc.public.Refresh(auth_pb2.RefreshRequest(refresh_token=grant.refresh_token))
    with pytest.raises(grpc.aio.AioRpcError) as reused:
        await sc.public.Refresh(auth_pb2.RefreshRequest(refresh_token=grant.refresh_token))
    assert reason_of(reused.value)[1] == "REFRESH_TOKEN_REUSED"
    event = await stream.next_event()
    assert event.WhichOneof("event") == "family_revoked"
    assert (event.family_revoked.iss, event.family_revoked.sid) == (
        sc.settings.tokens.issuer,
        sid,
    )
    assert await verify_reason(sc, grant.access_token) == REVOKED
    await stream.close()


async def test_revoking_a_refresh_token_sends_family_revoked(sc: RunningSidecar) -> None:
    stream = WatchStream(sc.public)
    await stream.sync()
    grant = await issue(sc, refresh=True)
    await sc.public.Revoke(auth_pb2.RevokeRequest(token=grant.refresh_token))
    event = await stream.next_event()
    assert event.WhichOneof("event") == "family_revoked"
    assert event.family_revoked.sid == claim_of(grant.refresh_token, "sid")
    await stream.close()


async def test_heartbeats_carry_the_latest_sequence(sc: RunningSidecar) -> None:
    stream = WatchStream(sc.public)
    await stream.sync()
    jtis = [await revoke_one(sc) for _ in range(3)]
    got = [(await stream.next_event()).token_revoked.jti for _ in jtis]
    assert got == jtis
    beats = [await stream.next() for _ in range(3)]
    assert [(b.WhichOneof("event"), b.sequence) for b in beats] == [("heartbeat", 3)] * 3
    assert {b.epoch for b in beats} == {sc.app.service.events.epoch}
    await stream.close()


async def test_resume_with_epoch_and_sequence_replays_exactly_the_missed_events(
    sc: RunningSidecar,
) -> None:
    stream = WatchStream(sc.public)
    epoch = (await stream.sync()).epoch
    first = await revoke_one(sc)
    event = await stream.next_event()
    assert (event.sequence, event.token_revoked.jti) == (1, first)
    await stream.close()
    missed = [await revoke_one(sc) for _ in range(3)]
    resumed = WatchStream(sc.public, epoch=epoch, after_sequence=1)
    sync = await resumed.sync()
    # The stream continues from the requested position: the replay follows without a gap.
    assert sync.sync.reset is False and sync.sequence == 1
    replayed = [await resumed.next() for _ in missed]
    assert [(m.sequence, m.token_revoked.jti) for m in replayed] == [
        (2, missed[0]),
        (3, missed[1]),
        (4, missed[2]),
    ]
    live = await revoke_one(sc)
    after = await resumed.next_event()
    assert (after.sequence, after.token_revoked.jti) == (5, live)  # no gap, no duplicate
    await resumed.close()
    # Resuming exactly at the head replays nothing and is not a reset.
    current = WatchStream(sc.public, epoch=epoch, after_sequence=5)
    assert (await current.sync()).sync.reset is False
    assert (await current.next()).WhichOneof("event") == "heartbeat"
    await current.close()


async def test_unknown_epoch_sequence_beyond_the_ring_or_hostile_values_reset(
    data_dir: Path,
) -> None:
    watch = {**FAST, "replay_buffer_size": 2}
    async with running_sidecar(data_dir, tokens={"audiences": [AUD]}, watch=watch) as sc:
        epoch = sc.app.service.events.epoch
        for _ in range(4):
            await revoke_one(sc)
        cases = [
            (epoch, 0),  # events 1 and 2 left the ring
            (epoch, 1),
            (epoch, 5),  # from the future
            (epoch, 2**64 - 1),
            ("another-process", 3),
            ("", 4),
            ("\u00e9" * 5000, 3),
        ]
        for resume_epoch, after in cases:
            stream = WatchStream(sc.public, epoch=resume_epoch, after_sequence=after)
            sync = await stream.sync()
            assert sync.sync.reset is True, (resume_epoch[:20], after)
            assert sync.sequence == 4 and sync.epoch == epoch
            # Nothing is replayed after a reset: the next message is a heartbeat.
            assert (await stream.next()).WhichOneof("event") == "heartbeat"
            await stream.close()
        stream = WatchStream(sc.public, epoch=epoch, after_sequence=2)
        sync = await stream.sync()
        assert (sync.sync.reset, sync.sequence) == (False, 2)
        assert [(await stream.next()).sequence for _ in range(2)] == [3, 4]
        await stream.close()


async def test_key_reload_that_removes_a_kid_sends_key_retired(data_dir: Path) -> None:
    keys = data_dir / "keyset"
    keys.mkdir()
    write_jwk_file(keys, "ES256", "k1")
    write_jwk_file(keys, "ES256", "k2")
    write_manifest(keys, "k1", 0)
    key_settings = {"directory": str(keys), "reload_interval_s": 0}
    async with running_sidecar(
        data_dir, keys=key_settings, tokens={"audiences": [AUD]}, watch=FAST
    ) as sc:
        token = (await issue(sc)).access_token  # signed with k1
        stream = WatchStream(sc.public)
        await stream.sync()
        write_manifest(keys, "k2", 0)  # promote k2: k1 still verifies, nothing is void
        sc.app.reload_keys()
        await eventually(lambda: _signing_kid(sc) == "k2", "k2 promoted")
        (keys / "k1.jwk.json").unlink()  # retire k1
        sc.app.reload_keys()
        event = await stream.next_event()
        assert event.WhichOneof("event") == "key_retired"
        assert (event.key_retired.kid, event.sequence) == ("k1", 1)
        assert await verify_reason(sc, token) == (grpc.StatusCode.UNAUTHENTICATED, "KEY_UNKNOWN")
        await stream.close()


def _signing_kid(sc: RunningSidecar) -> str | None:
    key = sc.app.service.ring.signing_key
    return key.kid if key is not None else None


async def test_a_subscriber_that_stops_reading_is_dropped_without_affecting_others(
    data_dir: Path,
) -> None:
    # A queue far larger than the few events published at once (8 Revokes in flight), so
    # the reading subscriber never falls behind by that much, however loaded the machine.
    watch = {**FAST, "subscriber_queue_size": 64}
    async with running_sidecar(data_dir, tokens={"audiences": [AUD]}, watch=watch) as sc:
        events = sc.app.service.events
        # No BDP probing: the stream's flow-control window stays at its initial 64 KiB, so a
        # client that does not read blocks the sidecar's writes after a few hundred events.
        options = [("grpc.http2.bdp_probe", 0)]
        async with grpc.aio.insecure_channel(sc.tcp_target, options=options) as channel:
            idle_call = auth_pb2_grpc.AuthServiceStub(channel).Watch(auth_pb2.WatchRequest())
            reader = WatchStream(sc.public)
            await reader.sync()
            await eventually(lambda: events.subscriber_count == 2, "both subscribed")
            received: list[int] = []

            async def read_all() -> None:
                while True:
                    message = await reader.next()
                    if message.WhichOneof("event") == "token_revoked":
                        received.append(message.sequence)

            reading = asyncio.create_task(read_all())
            revoked = 0
            while events.dropped == 0:
                assert revoked < 20_000, "the idle subscriber was never dropped"
                tokens = [(await issue(sc)).access_token for _ in range(8)]
                await asyncio.gather(
                    *(sc.public.Revoke(auth_pb2.RevokeRequest(token=t)) for t in tokens)
                )
                revoked += len(tokens)
            assert events.dropped == 1, revoked
            assert events.subscriber_count == 1  # the reader stays subscribed
            await eventually(lambda: len(received) == events.sequence, "the reader caught up")
            assert received == list(range(1, events.sequence + 1))
            # The dropped stream, read now, ends UNAVAILABLE with the reason after what the
            # transport had buffered.
            code, reason = await _end_of(idle_call)
            assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "WATCH_SUBSCRIBER_DROPPED")
            reading.cancel()
            await reader.close()


async def _end_of(call: Any) -> tuple[grpc.StatusCode, str]:
    try:
        async for _ in call:
            pass
    except grpc.aio.AioRpcError as error:
        return reason_of(error)
    return grpc.StatusCode.OK, ""


async def test_subscribers_beyond_the_limit_are_refused_resource_exhausted(
    data_dir: Path,
) -> None:
    async with running_sidecar(
        data_dir, watch={**FAST, "max_subscribers": 2}, tokens={"audiences": [AUD]}
    ) as sc:
        first, second = WatchStream(sc.public), WatchStream(sc.tcp)
        await first.sync()
        await second.sync()
        third = WatchStream(sc.public)
        assert await third.end() == (grpc.StatusCode.RESOURCE_EXHAUSTED, "WATCH_SUBSCRIBER_LIMIT")
        await first.close()  # a client going away frees its place
        events = sc.app.service.events
        await eventually(lambda: events.subscriber_count == 1, "the cancelled stream unsubscribed")
        fourth = WatchStream(sc.public)
        await fourth.sync()
        await second.close()
        await fourth.close()
        await eventually(lambda: events.subscriber_count == 0, "all unsubscribed")


async def test_watch_is_held_to_the_metadata_limit(sc: RunningSidecar) -> None:
    stream = WatchStream(sc.public, metadata=(("x-padding", "p" * 20_000),))
    assert await stream.end() == (grpc.StatusCode.INVALID_ARGUMENT, "METADATA_TOO_LARGE")
    assert sc.app.service.events.subscriber_count == 0


async def test_watch_streams_end_when_the_sidecar_stops(data_dir: Path) -> None:
    # A grace period far longer than the test: streams must end at the start of shutdown,
    # not when the grace period runs out (that would end them CANCELLED, minutes later).
    listen = {"grace_period_s": 120.0}
    cm = running_sidecar(data_dir, listen=listen, watch=FAST, tokens={"audiences": [AUD]})
    sc = await cm.__aenter__()
    stopping: asyncio.Task[None] | None = None
    own = grpc.aio.insecure_channel(sc.tcp_target)
    try:
        streams = [
            WatchStream(sc.public),
            WatchStream(sc.tcp),
            WatchStream(auth_pb2_grpc.AuthServiceStub(own)),
        ]
        for stream in streams:
            await stream.sync()
        stopping = asyncio.create_task(sc.app.stop())
        for stream in streams:
            assert await stream.end() == (grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN")
        await asyncio.wait_for(stopping, 60)
        assert sc.app.service.events.subscriber_count == 0
    finally:
        await own.close()
        for channel in sc.channels:
            await channel.close()
        if stopping is None:
            await sc.app.stop()


async def test_watch_metrics_count_subscribers_and_events_by_kind(data_dir: Path) -> None:
    async with running_sidecar(
        data_dir, metrics={"listen": "127.0.0.1:0"}, watch=FAST, tokens={"audiences": [AUD]}
    ) as sc:
        server = sc.app.metrics_server
        assert server is not None
        stream = WatchStream(sc.public)
        await stream.sync()
        await revoke_one(sc)
        await stream.next_event()
        text = await asyncio.to_thread(_scrape, server.address)
        assert "authsidecar_watch_subscribers 1.0" in text
        assert 'authsidecar_watch_events_published_total{kind="token_revoked"} 1.0' in text
        assert 'authsidecar_watch_events_published_total{kind="key_retired"} 0.0' in text
        assert "authsidecar_watch_subscribers_dropped_total 0.0" in text
        assert "authsidecar_watch_sequence 1.0" in text
        await stream.close()


def _scrape(address: str) -> str:
    url = f"http://{address}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:  # noqa: S310 - our own loopback endpoint
        text: str = reply.read().decode()
        return text


@pytest.mark.redis
async def test_a_revocation_at_one_sidecar_reaches_a_subscriber_of_another(
    redis_url: str,
) -> None:
    prefix = unique_prefix()
    try:
        async with fleet(
            2,
            redis_url,
            prefix,
            STORE__SYNC_INTERVAL_S="60",  # so the event can only come through the feed
            WATCH__HEARTBEAT_INTERVAL_MS="100",
            LISTEN__GRACE_PERIOD_S="60",
        ) as running:
            a, b = running.sidecars
            stream = WatchStream(b.stub)
            await stream.sync()
            grant = await a.admin_stub.Issue(
                auth_pb2.IssueRequest(subject="alice", audience=["svc"]), timeout=5
            )
            await b.stub.Verify(auth_pb2.VerifyRequest(token=grant.access_token), timeout=5)
            await a.stub.Revoke(auth_pb2.RevokeRequest(token=grant.access_token), timeout=5)
            event = await stream.next_event()
            assert event.WhichOneof("event") == "token_revoked"
            assert event.token_revoked.jti == claim_of(grant.access_token, "jti")
            # Sent only once B itself refuses the token.
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await b.stub.Verify(auth_pb2.VerifyRequest(token=grant.access_token), timeout=5)
            assert reason_of(refused.value) == REVOKED
            # SIGTERM: the stream ends at once, long before the 60 s grace period would.
            b.proc.send_signal(signal.SIGTERM)
            assert await stream.end() == (grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN")
            assert await asyncio.wait_for(b.proc.wait(), 50) == 0
    finally:
        delete_prefix(redis_url, prefix)


async def test_an_external_issuer_dropping_a_kid_sends_key_retired(data_dir: Path) -> None:
    ca = LocalCa.create(data_dir)
    server = JwksServer(ca)
    try:
        idp = ExternalIssuer()
        idp.add_key("idp-1")
        idp.add_key("idp-2")
        server.document = idp.jwks()
        issuer = {
            "issuer": ExternalIssuer.issuer,
            "audiences": ["api://orders"],
            "jwks_url": server.url,
            "ca_file": str(ca.ca_file),
            "refresh_s": 300,
            "timeout_s": 2,
        }
        async with running_sidecar(
            data_dir,
            clock=FixedClock(time.time()),  # the IdP stamps iat/exp from the real clock
            tokens={"audiences": [AUD]},
            issuers=[issuer],
            watch=FAST,
        ) as sc:
            (remote,) = sc.app.remote_keys
            retired = idp.keys.pop("idp-1")
            token = idp.token("idp-1", key=retired)
            assert await verify_reason(sc, token, "api://orders") == (grpc.StatusCode.OK, "")
            stream = WatchStream(sc.public)
            await stream.sync()
            idp.add_key("idp-3")  # an added key voids nothing
            server.document = idp.jwks()
            assert await remote.refresh()
            event = await stream.next_event()
            assert (event.WhichOneof("event"), event.key_retired.kid) == ("key_retired", "idp-1")
            assert event.sequence == 1
            assert await verify_reason(sc, token, "api://orders") == (
                grpc.StatusCode.UNAUTHENTICATED,
                "KEY_UNKNOWN",
            )
            await stream.close()
    finally:
        server.stop()


async def test_reconciliation_finding_a_revocation_sends_it_once(data_dir: Path) -> None:
    """Two sidecars on one SQLite file: B learns of A's revocation only by its poll (the
    mirror's full reload), and tells its subscribers exactly once."""
    key_file = write_jwk_file(data_dir, "ES256", "shared")
    common: dict[str, Any] = {
        "keys": {"files": [str(key_file)]},
        "tokens": {"audiences": [AUD]},
        "watch": FAST,
    }
    db = data_dir / "shared.db"
    store = {"backend": "sqlite", "sqlite_path": str(db), "sync_interval_s": 0.1}
    (data_dir / "a").mkdir()
    (data_dir / "b").mkdir()
    async with (
        running_sidecar(data_dir / "a", store=store, **common) as a,
        running_sidecar(data_dir / "b", store=store, **common) as b,
    ):
        stream = WatchStream(b.public)
        await stream.sync()
        token = (await issue(a)).access_token
        assert await verify_reason(b, token) == (grpc.StatusCode.OK, "")
        await a.public.Revoke(auth_pb2.RevokeRequest(token=token))
        event = await stream.next_event()
        assert (event.token_revoked.jti, event.sequence) == (claim_of(token, "jti"), 1)
        assert await verify_reason(b, token) == REVOKED
        # Later polls find nothing new: only heartbeats, still at sequence 1.
        for _ in range(5):
            beat = await stream.next()
            assert (beat.WhichOneof("event"), beat.sequence) == ("heartbeat", 1)
        await stream.close()


@pytest.mark.redis
async def test_store_lost_under_refuse_sends_decisions_reset(
    data_dir: Path, redis_server: RedisServer
) -> None:
    store = {
        "backend": "redis",
        "redis_url": redis_server.url,
        "redis_key_prefix": unique_prefix(),
        "redis_timeout_s": 0.5,
        "sync_interval_s": 0.1,
        "on_unavailable": "refuse",
    }
    async with running_sidecar(
        data_dir, store=store, tokens={"audiences": [AUD]}, watch=FAST
    ) as sc:
        token = (await issue(sc)).access_token
        stream = WatchStream(sc.public)
        await stream.sync()
        redis_server.stop()
        event = await stream.next_event()
        assert event.WhichOneof("event") == "decisions_reset"
        assert await verify_reason(sc, token) == (grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE")
        await stream.close()


async def test_a_stream_blocked_on_a_client_that_stopped_reading_ends_shutting_down(
    data_dir: Path,
) -> None:
    """The queue is large enough never to drop it: only shutdown can end this stream, and
    its handler is stuck in a write (flow control) when shutdown begins. The end is queued
    at once, but HTTP/2 delivers it only behind the unread events: the client sees them,
    then UNAVAILABLE / SHUTTING_DOWN, as soon as it reads again. (A client that never reads
    again holds the stop until the grace period ends and the connection is closed.)"""
    watch = {**FAST, "subscriber_queue_size": 100_000}
    cm = running_sidecar(
        data_dir, listen={"grace_period_s": 120.0}, watch=watch, tokens={"audiences": [AUD]}
    )
    sc = await cm.__aenter__()
    stopping: asyncio.Task[None] | None = None
    options = [("grpc.http2.bdp_probe", 0)]  # the stream's window stays at 64 KiB
    channel = grpc.aio.insecure_channel(sc.tcp_target, options=options)
    try:
        events = sc.app.service.events
        call = auth_pb2_grpc.AuthServiceStub(channel).Watch(auth_pb2.WatchRequest())
        await eventually(lambda: events.subscriber_count == 1, "subscribed")
        published = 3000  # ~300 KB of events: far beyond the window
        mirror = sc.app.service.revocations
        for i in range(published):
            # The entry point of the store's revocation feed.
            mirror.add(Revocation("jti", sc.settings.tokens.issuer, f"jti-{i}", 2_000_000_000))
            if i % 100 == 0:
                await asyncio.sleep(0.01)  # let the handler write what the window allows
        await asyncio.sleep(0.5)
        stopping = asyncio.create_task(sc.app.stop())
        await eventually(lambda: events.closed, "shutdown began")
        await asyncio.sleep(0.5)
        received = 0
        try:
            async for message in call:
                received += message.WhichOneof("event") == "token_revoked"
            outcome = (grpc.StatusCode.OK, "")
        except grpc.aio.AioRpcError as error:
            outcome = reason_of(error)
        assert outcome == (grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN")
        assert received < published  # it was blocked: the rest never left the sidecar
        await asyncio.wait_for(stopping, 60)  # far inside the 120 s grace period
    finally:
        await channel.close()
        for own in sc.channels:
            await own.close()
        if stopping is None:
            await sc.app.stop()
