"""Tokens for the client tests, minted through the sidecar's admin socket."""

from __future__ import annotations

from authsidecar.v1 import auth_pb2
from tests.support.sidecar import RunningSidecar


async def mint(
    sidecar: RunningSidecar,
    *,
    sub: str = "alice",
    aud: tuple[str, ...] = ("svc-b",),
    scope: str = "read",
    ttl_s: int = 0,
) -> str:
    grant = await sidecar.admin.Issue(
        auth_pb2.IssueRequest(subject=sub, audience=aud, scope=scope, expires_in=ttl_s)
    )
    return grant.access_token


def expire(sidecar: RunningSidecar, ttl_s: int = 900) -> None:
    """Move the sidecar's clock past a fresh token's `exp` and the leeway."""
    sidecar.clock.advance(ttl_s + sidecar.settings.tokens.leeway_s + 1)
