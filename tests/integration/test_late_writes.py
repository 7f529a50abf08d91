"""Issue 13, finding 2: a write the client was told failed never happens later.

A real sidecar process talks to a private Redis through a real TCP proxy (tests/support/
tcp_proxy.py). The link is cut silently while a write is on it: the sidecar gives up after
`store.redis_timeout_s` and answers UNAVAILABLE; then the link heals and the held command
reaches Redis, late. Redis's MONITOR (on a direct connection) shows the script arriving and
running: it reads TIME and writes nothing. The client's retry then gets what it would have got
had the first attempt never been sent.

Every script is run once before the cut, so the late EVALSHA finds its script cached and really
runs (a NOSCRIPT reply would prove nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
import redis.asyncio

from authsidecar.v1 import auth_pb2
from sidecar.store import redis_scripts
from sidecar.store.redis_keys import KeyLayout
from tests.integration.test_multi_sidecar import (
    POLL,
    REVOKED,
    UNAVAILABLE,
    issue,
    jti_of,
    outcome,
    refresh,
    until_refused,
    verify,
)
from tests.support.fleet import SidecarProcess, fleet
from tests.support.redis import RedisServer, key_pattern
from tests.support.tcp_proxy import TcpProxy, tcp_proxy

pytestmark = pytest.mark.redis

PREFIX = "late"
SETTINGS = {**POLL, "TOKENS__REFRESH_GRACE_S": "0", "STORE__REDIS_TIMEOUT_S": "1"}
WRITES = ("CREATE_FAMILY", "ROTATE", "REVOKE")


def _sha(name: str) -> str:
    script: str = getattr(redis_scripts, name)
    return hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()


class Monitor:
    """MONITOR on a direct connection: every command Redis runs, scripts' inner ones too."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.commands: list[dict[str, Any]] = []
        self.since = 0

    def mark(self) -> None:
        """Look only at commands seen from now on."""
        self.since = len(self.commands)

    def script_run(self, sha: str, needle: str = "") -> list[str] | None:
        """The commands run inside the first EVALSHA of `sha` since `mark` (whose arguments
        contain `needle`), or None while none has arrived."""
        for i, entry in enumerate(self.commands):
            if i < self.since:
                continue
            command = str(entry.get("command", ""))
            if command.startswith(f"EVALSHA {sha}") and needle in command:
                inner = []
                for later in self.commands[i + 1 :]:
                    if later.get("client_type") != "lua":
                        break
                    inner.append(str(later["command"]).split()[0].upper())
                return inner
        return None

    async def until_script_ran(self, sha: str, needle: str = "", limit_s: float = 15) -> list[str]:
        """Wait for the EVALSHA, then for a marker sent after it on a direct connection:
        Redis runs one command at a time and a script to its end, so once the marker shows,
        every command of the script is in the list before it."""
        deadline = time.monotonic() + limit_s
        while self.script_run(sha, needle) is None:
            assert time.monotonic() < deadline, "the held command never reached Redis"
            await asyncio.sleep(0.02)
        marker = f"barrier-{time.monotonic_ns()}"
        client = redis.asyncio.Redis.from_url(self.url, decode_responses=True)
        try:
            await client.echo(marker)
        finally:
            await client.aclose()
        while not any(marker in str(entry.get("command", "")) for entry in self.commands):
            assert time.monotonic() < deadline, "MONITOR never showed the barrier"
            await asyncio.sleep(0.02)
        inner = self.script_run(sha, needle)
        assert inner is not None
        return inner


@contextlib.asynccontextmanager
async def monitoring(url: str) -> AsyncIterator[Monitor]:
    monitor = Monitor(url)
    client = redis.asyncio.Redis.from_url(url, decode_responses=True)

    async def read() -> None:
        async with client.monitor() as stream:
            async for entry in stream.listen():
                monitor.commands.append(entry)

    task = asyncio.create_task(read())
    await asyncio.sleep(0.2)  # MONITOR is on before anything we watch is sent
    try:
        yield monitor
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, redis.RedisError, OSError):
            await task
        await client.aclose()


@contextlib.asynccontextmanager
async def proxied_sidecar(server: RedisServer) -> AsyncIterator[tuple[SidecarProcess, TcpProxy]]:
    async with (
        tcp_proxy("127.0.0.1", server.port) as proxy,
        fleet(1, proxy.url, PREFIX, **SETTINGS) as f,
    ):
        sc = f.sidecars[0]
        # Warm-up: every write script runs once, so Redis has all of them cached.
        warm = await issue(sc, refresh=True)
        assert not isinstance(await refresh(sc, warm.refresh_token), tuple)
        await sc.stub.Revoke(auth_pb2.RevokeRequest(token=warm.access_token), timeout=5)
        yield sc, proxy


def _families(url: str) -> int:
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        return len(list(client.scan_iter(match=key_pattern(PREFIX, "fam:*"))))
    finally:
        client.close()


async def test_refresh_failed_on_a_cut_link_is_not_applied_when_it_heals(
    redis_server: RedisServer,
) -> None:
    async with proxied_sidecar(redis_server) as (sc, proxy), monitoring(redis_server.url) as mon:
        grant = await issue(sc, refresh=True)
        presented = jti_of(grant.refresh_token)
        mon.mark()
        proxy.cut()
        assert await refresh(sc, grant.refresh_token) == UNAVAILABLE
        proxy.heal()
        inner = await mon.until_script_ran(_sha("ROTATE"), presented)
        assert proxy.held_then_delivered > 0
        assert inner[:1] == ["TIME"] and not {"HSET", "ZADD", "XADD"} & set(inner), inner
        # The retry is an ordinary rotation; had the late script applied, this token would
        # be retired and (grace 0) its presentation reuse, revoking the family.
        retried = await refresh(sc, grant.refresh_token)
        assert not isinstance(retried, tuple), retried
        assert not isinstance(await verify(sc, retried.access_token), tuple)
        assert not isinstance(await refresh(sc, retried.refresh_token), tuple)


async def test_revoke_failed_on_a_cut_link_is_not_applied_when_it_heals(
    redis_server: RedisServer,
) -> None:
    async with proxied_sidecar(redis_server) as (sc, proxy), monitoring(redis_server.url) as mon:
        grant = await issue(sc)
        jti = jti_of(grant.access_token)
        mon.mark()
        proxy.cut()
        revoke = sc.stub.Revoke(auth_pb2.RevokeRequest(token=grant.access_token), timeout=5)
        assert await outcome(revoke) == UNAVAILABLE
        proxy.heal()
        inner = await mon.until_script_ran(_sha("REVOKE"), jti)
        assert inner[:1] == ["TIME"] and not {"ZADD", "XADD"} & set(inner), inner
        assert not isinstance(await verify(sc, grant.access_token), tuple)  # not revoked
        client = redis.Redis.from_url(redis_server.url, decode_responses=True)
        try:
            members = client.zrange(KeyLayout(PREFIX).partition_of(jti).revoked, 0, -1)
        finally:
            client.close()
        assert not any(jti in member for member in members)
        # The client's retry revokes it, as it would have the first time.
        await sc.stub.Revoke(auth_pb2.RevokeRequest(token=grant.access_token), timeout=5)
        await until_refused(sc, grant.access_token)
        assert await verify(sc, grant.access_token) == REVOKED


async def test_issue_with_refresh_failed_on_a_cut_link_creates_no_family_when_it_heals(
    redis_server: RedisServer,
) -> None:
    async with proxied_sidecar(redis_server) as (sc, proxy), monitoring(redis_server.url) as mon:
        families = _families(redis_server.url)
        mon.mark()
        proxy.cut()
        assert await outcome(issue(sc, refresh=True)) == UNAVAILABLE
        proxy.heal()
        inner = await mon.until_script_ran(_sha("CREATE_FAMILY"))
        assert inner[:1] == ["TIME"] and "HSET" not in inner, inner
        assert _families(redis_server.url) == families
        retried = await issue(sc, refresh=True)
        assert _families(redis_server.url) == families + 1
        assert not isinstance(await refresh(sc, retried.refresh_token), tuple)


async def test_sidecar_killed_between_the_reuse_script_and_its_reply_leaves_the_family_dead(
    redis_server: RedisServer,
) -> None:
    """Issue 12: the reuse revocation, at its full horizon, is part of the one script. The
    script runs whole (MONITOR shows it), its reply is held, the sidecar is SIGKILLed before
    hearing it: nothing is left for the dead process to finish. Every token of the family is
    refused at a sidecar started afterwards, and the revocation lasts past the family's end
    by the longest access-token lifetime plus leeway (defaults: 3600 + 30 s)."""
    async with (
        tcp_proxy("127.0.0.1", redis_server.port) as proxy,
        fleet(1, proxy.url, PREFIX, **SETTINGS) as f,
        monitoring(redis_server.url) as mon,
    ):
        sc = f.sidecars[0]
        stolen = await issue(sc, refresh=True)
        rotated = await refresh(sc, stolen.refresh_token)
        assert not isinstance(rotated, tuple), rotated
        mon.mark()
        proxy.cut(replies_only=True)
        reuse = asyncio.create_task(refresh(sc, stolen.refresh_token))
        inner = await mon.until_script_ran(_sha("ROTATE"), jti_of(stolen.refresh_token))
        assert {"HSET", "ZADD", "XADD"} <= set(inner), inner  # the whole reuse, in one step
        sc.proc.kill()
        await sc.proc.wait()
        await reuse  # the call died with the process
        proxy.heal()

        client = redis.Redis.from_url(redis_server.url, decode_responses=True)
        try:
            (family_key,) = client.scan_iter(match=key_pattern(PREFIX, "fam:*"))
            family = client.hgetall(family_key)
            # The reuse revocation is in the family's own partition (one slot, one script).
            revoked = KeyLayout(PREFIX).partition_of(str(family["family_id"])).revoked
            horizon = client.zscore(revoked, family["revocation"])
        finally:
            client.close()
        assert family["revoked"] == "1"
        assert horizon == int(family["expires_at"]) + 3600 + 30
        restarted = await f.restart(0)
        for token in (stolen.access_token, rotated.access_token):
            assert await verify(restarted, token) == REVOKED
        assert await refresh(restarted, rotated.refresh_token) == REVOKED
