"""Renewal: one renewal in flight however many callers wait, and one retry on UNAUTHENTICATED.

The sidecar-backed sources issue through a real proxy in front of the admin socket, which
counts Issue round trips and can make them slow.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from authsidecar.client import (
    AsyncAuthClient,
    AsyncRenewingTokenSource,
    AuthClient,
    AuthPolicy,
    RenewingTokenSource,
    TokenGrant,
    async_sidecar_token_source,
    sidecar_token_source,
)
from authsidecar.v1 import auth_pb2
from tests.client.harness import OK, UNAUTHENTICATED, call_b, service_b
from tests.client.proxy import sidecar_proxy
from tests.support.marks import AIO
from tests.support.polling import eventually_async
from tests.support.sidecar import RunningSidecar

POLICY = AuthPolicy(audience="svc-b")
CALLERS = 12


def _source(
    aio: bool, admin: str, audience: tuple[str, ...] = ("svc-b",)
) -> tuple[RenewingTokenSource | AsyncRenewingTokenSource, AuthClient | AsyncAuthClient]:
    if aio:
        aclient = AsyncAuthClient(admin)
        return async_sidecar_token_source(aclient, "alice", audience), aclient
    client = AuthClient(admin)
    return sidecar_token_source(client, "alice", audience), client


async def _close(client: AuthClient | AsyncAuthClient) -> None:
    if isinstance(client, AsyncAuthClient):
        await client.close()
    else:
        client.close()


@AIO
async def test_concurrent_callers_share_one_renewal(
    sidecar: RunningSidecar, socket_dir: Path, aio: bool
) -> None:
    async with sidecar_proxy(sidecar.admin_target, socket_dir) as slow_admin:
        slow_admin.delay_s = 0.3  # every caller arrives while the first Issue is in flight
        source, client = _source(aio, slow_admin.target)
        async with service_b(aio, sidecar.unix_target, POLICY) as b:
            outcomes = await asyncio.gather(
                *(call_b(aio, b, source, "Whoami") for _ in range(CALLERS))
            )
        await _close(client)
    assert [o.code for o in outcomes] == [OK] * CALLERS
    assert source.renewals == 1
    assert slow_admin.attempts["Issue"] == 1


@AIO
async def test_refused_token_is_renewed_and_the_call_retried_once(
    sidecar: RunningSidecar, socket_dir: Path, aio: bool
) -> None:
    async with sidecar_proxy(sidecar.admin_target, socket_dir) as admin:
        source, client = _source(aio, admin.target)
        async with service_b(aio, sidecar.unix_target, POLICY) as b:
            first = await call_b(aio, b, source, "Whoami")
            # Revoked behind the source's back: it still believes its token is fresh.
            for token in await _current_token(source):
                await sidecar.public.Revoke(auth_pb2.RevokeRequest(token=token))
            outcomes = await asyncio.gather(
                *(call_b(aio, b, source, "Whoami") for _ in range(CALLERS))
            )
        await _close(client)
    assert first.code == OK
    assert [o.code for o in outcomes] == [OK] * CALLERS
    # CALLERS calls refused with the same token: one renewal between them, not CALLERS.
    assert source.renewals == 2
    assert admin.attempts["Issue"] == 2


async def _current_token(source: RenewingTokenSource | AsyncRenewingTokenSource) -> list[str]:
    if isinstance(source, AsyncRenewingTokenSource):
        return [await source.token()]
    return [await asyncio.to_thread(source.token)]


async def _current_token_differs(
    source: RenewingTokenSource | AsyncRenewingTokenSource, before: list[str]
) -> bool:
    return await _current_token(source) != before


@AIO
async def test_a_second_refusal_is_returned_not_retried_again(
    sidecar: RunningSidecar, socket_dir: Path, aio: bool
) -> None:
    async with sidecar_proxy(sidecar.admin_target, socket_dir) as admin:
        # Every token this source gets is for svc-a, so B refuses each one.
        source, client = _source(aio, admin.target, audience=("svc-a",))
        async with service_b(aio, sidecar.unix_target, POLICY) as b:
            outcome = await call_b(aio, b, source, "Whoami")
        await _close(client)
    assert (outcome.code, outcome.reason) == (UNAUTHENTICATED, "AUDIENCE_MISMATCH")
    assert source.renewals == 2  # the first token, and exactly one renewal for the retry
    assert admin.attempts["Issue"] == 2


@AIO
async def test_streams_are_not_retried_but_invalidate_the_refused_token(
    sidecar: RunningSidecar, socket_dir: Path, aio: bool
) -> None:
    async with sidecar_proxy(sidecar.admin_target, socket_dir) as admin:
        source, client = _source(aio, admin.target)
        async with service_b(aio, sidecar.unix_target, POLICY) as b:
            revoked = await _current_token(source)
            for token in revoked:
                await sidecar.public.Revoke(auth_pb2.RevokeRequest(token=token))
            refused = await call_b(aio, b, source, "Count")
            # The refusal invalidates the token (aio: in a done-callback that runs as a task):
            # the source hands out another once that has happened, and only then.
            await eventually_async(
                lambda: _current_token_differs(source, revoked), "the refused token dropped"
            )
            renewed = await call_b(aio, b, source, "Count")
        await _close(client)
    assert (refused.code, refused.reason) == (UNAUTHENTICATED, "TOKEN_REVOKED")
    assert renewed.code == OK
    assert source.renewals == 2


def test_token_is_renewed_skew_seconds_before_it_expires() -> None:
    now = [1000.0]
    grants = iter(TokenGrant(f"t{i}", "Bearer", 300, "", "") for i in range(10))
    source = RenewingTokenSource(lambda: next(grants), skew_s=30, now=lambda: now[0])
    assert source.token() == "t0"
    now[0] += 269
    assert source.token() == "t0"
    now[0] += 1  # 300 - 30 seconds after the fetch
    assert source.token() == "t1"


def test_short_lived_tokens_are_renewed_at_half_their_lifetime() -> None:
    now = [0.0]
    grants = iter(TokenGrant(f"t{i}", "Bearer", 20, "", "") for i in range(10))
    source = RenewingTokenSource(lambda: next(grants), skew_s=30, now=lambda: now[0])
    assert source.token() == "t0"
    now[0] = 9.9
    assert source.token() == "t0"
    now[0] = 10.0
    assert source.token() == "t1"


def test_invalidate_ignores_a_token_that_is_no_longer_cached() -> None:
    grants = iter(TokenGrant(f"t{i}", "Bearer", 300, "", "") for i in range(10))
    source = RenewingTokenSource(lambda: next(grants))
    assert source.token() == "t0"
    source.invalidate("t0")
    assert source.token() == "t1"
    source.invalidate("t0")  # a late refusal of the old token
    assert source.token() == "t1"
    assert source.renewals == 2


async def test_refresh_backed_source_keeps_rotating(sidecar: RunningSidecar) -> None:
    grant = await sidecar.admin.Issue(
        auth_pb2.IssueRequest(subject="alice", audience=["svc-b"], refresh_token=True)
    )
    async with AsyncAuthClient(sidecar.unix_target) as client:
        source = async_sidecar_token_source(client, refresh_token=grant.refresh_token)
        first = await source.token()
        source.invalidate(first)
        second = await source.token()  # a reuse of the first refresh token would fail here
        claims = await client.verify(second)
    assert first != second and claims.sub == "alice"
    assert source.renewals == 2
