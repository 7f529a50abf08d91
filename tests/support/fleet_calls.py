"""The calls the multi-process tests make to a fleet's sidecars, each outcome as a value.

A failure comes back as (code, reason) rather than raised, so a test can compare outcomes.
`POLL` sets a fleet's store poll far beyond any test, so whatever reaches a sidecar within a
test reached it by push (the revocation feed, a reconnection's reconciliation), never by the
poll; `until_refused` waits by progress for that, bounded by `PUSH_BOUND_S`, a bound for a
hung test that is still far below the poll interval, never a speed check.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import grpc

from authsidecar.v1 import auth_pb2
from tests.support.fleet import SidecarProcess
from tests.support.sidecar import reason_of

POLL_INTERVAL_S = 3600
POLL = {"STORE__SYNC_INTERVAL_S": str(POLL_INTERVAL_S)}
PUSH_BOUND_S = 30.0
UNAVAILABLE = (grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE")
REVOKED = (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_REVOKED")
REUSED = (grpc.StatusCode.UNAUTHENTICATED, "REFRESH_TOKEN_REUSED")


def jti_of(token: str) -> str:
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return str(claims["jti"])


async def issue(sc: SidecarProcess, *, refresh: bool = False) -> auth_pb2.IssueResponse:
    request = auth_pb2.IssueRequest(subject="alice", audience=["svc"], refresh_token=refresh)
    return await sc.admin_stub.Issue(request, timeout=5)


async def outcome(call: Any) -> Any:
    """The reply, or (code, reason) of the failure."""
    try:
        return await call
    except grpc.aio.AioRpcError as error:
        return reason_of(error)


async def verify(sc: SidecarProcess, token: str) -> Any:
    return await outcome(sc.stub.Verify(auth_pb2.VerifyRequest(token=token), timeout=5))


async def refresh(sc: SidecarProcess, token: str) -> Any:
    return await outcome(sc.stub.Refresh(auth_pb2.RefreshRequest(refresh_token=token), timeout=5))


async def until_refused(sc: SidecarProcess, token: str, limit_s: float = PUSH_BOUND_S) -> float:
    """Seconds until Verify at `sc` refuses `token` as revoked; fails the test past `limit_s`
    or on any other refusal."""
    start = time.perf_counter()
    while True:
        result = await verify(sc, token)
        elapsed = time.perf_counter() - start
        if result == REVOKED:
            return elapsed
        assert not isinstance(result, tuple), result
        assert elapsed < limit_s, f"not refused after {elapsed:.3f}s"
        await asyncio.sleep(0.001)
