"""Where outgoing calls get their bearer token: the `TokenSource` protocols and sources.

* `StaticTokenSource`: one fixed token (tests, tokens injected by the platform).
* `CallableTokenSource` / `AsyncCallableTokenSource`: ask a function each call.
* `sidecar_token_source` / `async_sidecar_token_source`: a `RenewingTokenSource` that gets its
  token from the sidecar, by Issue (admin socket) or by Refresh from a refresh token it then
  keeps rotating, and renews it before it expires.

`invalidate(token)` tells a source the server refused `token`; the client interceptor calls
it before its one retry. Sources that cannot renew ignore it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol

import grpc

from authsidecar.client._async_client import AsyncAuthClient
from authsidecar.client._client import AuthClient
from authsidecar.client._models import TokenGrant
from authsidecar.client._renewal import (
    DEFAULT_SKEW_S,
    AsyncRenewingTokenSource,
    RenewingTokenSource,
)

AUTHORIZATION = "authorization"


class TokenSource(Protocol):
    def token(self) -> str:
        """A token valid now (may block to renew)."""
        ...

    def invalidate(self, token: str) -> None:
        """`token` was refused: do not hand it out again."""
        ...


class AsyncTokenSource(Protocol):
    def token(self) -> Awaitable[str]: ...

    def invalidate(self, token: str) -> None: ...


class StaticTokenSource:
    def __init__(self, token: str) -> None:
        self._token = token

    def token(self) -> str:
        return self._token

    def invalidate(self, token: str) -> None:
        """A fixed token cannot be renewed; the retry resends it."""


class CallableTokenSource:
    def __init__(self, get: Callable[[], str]) -> None:
        self._get = get

    def token(self) -> str:
        return self._get()

    def invalidate(self, token: str) -> None:
        """The callable decides freshness itself."""


class AsyncCallableTokenSource:
    def __init__(self, get: Callable[[], Awaitable[str]]) -> None:
        self._get = get

    async def token(self) -> str:
        return await self._get()

    def invalidate(self, token: str) -> None:
        """The callable decides freshness itself."""


class _Rotation:
    """The refresh token to present next: each Refresh retires it and returns its successor."""

    def __init__(self, refresh_token: str) -> None:
        self.current = refresh_token

    def keep(self, grant: TokenGrant) -> TokenGrant:
        self.current = grant.refresh_token
        return grant


def sidecar_token_source(
    client: AuthClient,
    subject: str = "",
    audience: Sequence[str] = (),
    *,
    scope: str = "",
    claims: Mapping[str, object] | None = None,
    expires_in: int = 0,
    refresh_token: str = "",
    skew_s: float = DEFAULT_SKEW_S,
) -> RenewingTokenSource:
    """Tokens from the sidecar: Issue `subject` (the client must reach the admin socket), or,
    given `refresh_token`, Refresh and keep the rotated successor for the next renewal."""
    if refresh_token:
        rotation = _Rotation(refresh_token)

        def rotate() -> TokenGrant:
            return rotation.keep(client.refresh(rotation.current, scope=scope))

        return RenewingTokenSource(rotate, skew_s=skew_s)

    def issue() -> TokenGrant:
        return client.issue(subject, audience, scope=scope, claims=claims, expires_in=expires_in)

    return RenewingTokenSource(issue, skew_s=skew_s)


def async_sidecar_token_source(
    client: AsyncAuthClient,
    subject: str = "",
    audience: Sequence[str] = (),
    *,
    scope: str = "",
    claims: Mapping[str, object] | None = None,
    expires_in: int = 0,
    refresh_token: str = "",
    skew_s: float = DEFAULT_SKEW_S,
) -> AsyncRenewingTokenSource:
    """As `sidecar_token_source`, for asyncio."""
    if refresh_token:
        rotation = _Rotation(refresh_token)

        async def rotate() -> TokenGrant:
            return rotation.keep(await client.refresh(rotation.current, scope=scope))

        return AsyncRenewingTokenSource(rotate, skew_s=skew_s)

    async def issue() -> TokenGrant:
        return await client.issue(
            subject, audience, scope=scope, claims=claims, expires_in=expires_in
        )

    return AsyncRenewingTokenSource(issue, skew_s=skew_s)


class _BearerPlugin(grpc.AuthMetadataPlugin):
    def __init__(self, source: TokenSource) -> None:
        self._source = source

    def __call__(
        self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback
    ) -> None:
        try:
            token = self._source.token()
        except Exception as error:  # grpc fails the call with this error as UNAVAILABLE
            callback((), error)
            return
        # The metadata keys provided to the callback must be lower-cased (grpc docs).
        callback(((AUTHORIZATION, f"Bearer {token}"),), None)


def bearer_call_credentials(source: TokenSource) -> grpc.CallCredentials:
    """Call credentials adding the bearer token: the alternative to the client interceptor
    for secure channels (TLS, or `grpc.local_channel_credentials()`), without the retry."""
    return grpc.metadata_call_credentials(_BearerPlugin(source), name="authsidecar-bearer")
