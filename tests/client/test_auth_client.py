"""AuthClient and AsyncAuthClient against the real sidecar: calls, typed errors, retries."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

import authsidecar.client
from authsidecar.client import (
    AsyncAuthClient,
    AuthClient,
    InvalidRequestError,
    PermissionDeniedError,
    SidecarUnavailableError,
    TokenInvalidError,
)
from tests.client.proxy import sidecar_proxy
from tests.client.tokens import expire
from tests.support.marks import AIO
from tests.support.sidecar import RunningSidecar

T = TypeVar("T")


class Either:
    """One face for both clients: sync calls run in a worker thread (the sidecar under test
    runs on this event loop), asyncio calls are awaited."""

    def __init__(self, aio: bool, address: str, **options: Any) -> None:
        self.aio = aio
        self.client: AuthClient | AsyncAuthClient = (
            AsyncAuthClient(address, **options) if aio else AuthClient(address, **options)
        )

    async def __call__(self, name: str, *args: Any, **kwargs: Any) -> Any:
        method: Callable[..., Any] = getattr(self.client, name)
        if self.aio:
            return await method(*args, **kwargs)
        return await asyncio.to_thread(method, *args, **kwargs)

    async def close(self) -> None:
        if isinstance(self.client, AsyncAuthClient):
            await self.client.close()
        else:
            self.client.close()


async def raises(kind: type[Exception], call: Awaitable[T]) -> Any:
    with pytest.raises(kind) as caught:
        await call
    return caught.value


@AIO
async def test_every_call_returns_typed_results(sidecar: RunningSidecar, aio: bool) -> None:
    admin, public = Either(aio, sidecar.admin_target), Either(aio, sidecar.unix_target)
    grant = await admin(
        "issue", "alice", ["svc-b"], scope="read write", claims={"role": "ops"}, refresh_token=True
    )
    assert (grant.token_type, grant.expires_in, grant.scope) == ("Bearer", 900, "read write")
    assert grant.access_token not in repr(grant)
    claims = await public("verify", grant.access_token, audience="svc-b", required_scopes=["read"])
    assert (claims.sub, claims.aud, claims.scopes) == ("alice", ("svc-b",), {"read", "write"})
    assert claims.claims["role"] == "ops"
    info = await public("introspect", grant.access_token)
    assert (info.active, info.sub, info.token_type) == (True, "alice", "Bearer")
    rotated = await public("refresh", grant.refresh_token)
    assert rotated.refresh_token and rotated.refresh_token != grant.refresh_token
    await public("revoke", grant.access_token)
    assert (await public("introspect", grant.access_token)).active is False
    jwks = await public("get_jwks")
    assert isinstance(jwks["keys"], list) and jwks["keys"]
    await admin.close()
    await public.close()


@AIO
async def test_errors_carry_code_and_reason(sidecar: RunningSidecar, aio: bool) -> None:
    admin, public = Either(aio, sidecar.admin_target), Either(aio, sidecar.tcp_target)
    grant = await admin("issue", "alice", ["svc-b"], scope="read")
    denied = await raises(PermissionDeniedError, public("issue", "alice", ["svc-b"]))
    assert (denied.code, denied.reason) == (grpc.StatusCode.PERMISSION_DENIED, "CALLER_NOT_ALLOWED")
    missing = await raises(
        PermissionDeniedError, public("verify", grant.access_token, required_scopes=["admin"])
    )
    assert missing.reason == "SCOPE_MISSING"
    bad = await raises(InvalidRequestError, public("verify", ""))
    assert (bad.code, bad.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    expire(sidecar)
    expired = await raises(TokenInvalidError, public("verify", grant.access_token))
    assert (expired.code, expired.reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_EXPIRED")
    assert grant.access_token not in str(expired)
    await admin.close()
    await public.close()


@AIO
async def test_unavailable_is_retried_with_backoff(
    sidecar: RunningSidecar, socket_dir: Path, aio: bool
) -> None:
    async with sidecar_proxy(sidecar.unix_target, socket_dir) as flaky:
        flaky.fail_first = {"Verify": 2, "Introspect": 9}
        client = Either(aio, flaky.target, max_attempts=4, initial_backoff_s=0.01)
        # Two UNAVAILABLE answers, then the third attempt reaches the sidecar.
        refused = await raises(TokenInvalidError, client("verify", "x.y.z"))
        assert refused.reason == "TOKEN_MALFORMED"
        assert flaky.attempts["Verify"] == 3
        gave_up = await raises(SidecarUnavailableError, client("introspect", "x.y.z"))
        assert gave_up.code == grpc.StatusCode.UNAVAILABLE
        assert flaky.attempts["Introspect"] == 4
        await client.close()


@AIO
async def test_other_failures_and_refresh_are_never_retried(
    sidecar: RunningSidecar, socket_dir: Path, aio: bool
) -> None:
    async with sidecar_proxy(sidecar.unix_target, socket_dir) as flaky:
        flaky.fail_first = {"Refresh": 1}
        client = Either(aio, flaky.target, max_attempts=4, initial_backoff_s=0.01)
        await raises(TokenInvalidError, client("verify", "x.y.z"))
        assert flaky.attempts["Verify"] == 1
        # A lost Refresh reply plus a resend would look like refresh-token reuse.
        await raises(SidecarUnavailableError, client("refresh", "x.y.z"))
        assert flaky.attempts["Refresh"] == 1
        await client.close()


@AIO
async def test_unreachable_sidecar_is_sidecar_unavailable(socket_dir: Path, aio: bool) -> None:
    client = Either(aio, f"unix:{socket_dir / 'nobody.sock'}", timeout_s=2)
    error = await raises(SidecarUnavailableError, client("verify", "x.y.z"))
    assert error.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    await client.close()


def test_address_defaults_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTHSIDECAR_ADDR", "unix:/run/authsidecar/auth.sock")
    with AuthClient() as client:
        assert client.address == "unix:/run/authsidecar/auth.sock"
    monkeypatch.delenv("AUTHSIDECAR_ADDR")
    with AuthClient() as client:
        assert client.address == "127.0.0.1:50051"


def test_exports_match_the_public_namespace() -> None:
    public = {
        name
        for name, value in vars(authsidecar.client).items()
        if not name.startswith("_") and getattr(value, "__module__", "").startswith("authsidecar")
    }
    assert set(authsidecar.client.__all__) >= public
    assert all(hasattr(authsidecar.client, name) for name in authsidecar.client.__all__)


def test_the_client_library_imports_without_the_server() -> None:
    probe = (
        "import sys, authsidecar.client as c\n"
        "c.AuthServerInterceptor(c.AuthClient('unix:/nonexistent.sock')).close()\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'sidecar', 'jose', 'cryptography', 'pydantic'})\n"
        "print(bad)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
