"""`AsyncAuthClient`: the sidecar's calls from asyncio code.

Same shape and semantics as `AuthClient` (address, deadlines, retry on UNAVAILABLE only,
typed results and errors) over a `grpc.aio` channel, so no call blocks the event loop.
Construct it inside a running event loop.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING

import grpc

from authsidecar.client._transport import channel_options, resolve_address
from authsidecar.client.client import DEFAULT_TIMEOUT_S
from authsidecar.client.errors import AuthClientError, from_rpc_error
from authsidecar.client.models import (
    Introspection,
    TokenGrant,
    VerifiedClaims,
    VerifyItem,
    batch_request,
    batch_results,
    claims_from,
    grant_from,
    introspection_from,
    issue_request,
)
from authsidecar.v1 import auth_pb2, auth_pb2_grpc

if TYPE_CHECKING:
    from authsidecar.v1.auth_pb2_grpc import AuthServiceAsyncStub


class AsyncAuthClient:
    """An asyncio client for one sidecar; use from the loop it was created in."""

    def __init__(
        self,
        address: str | None = None,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_attempts: int = 4,
        initial_backoff_s: float = 0.1,
        channel: grpc.aio.Channel | None = None,
    ) -> None:
        """Arguments as for `AuthClient`."""
        self.address = resolve_address(address)
        self.timeout_s = timeout_s
        self._owned = channel is None
        self._channel = channel or grpc.aio.insecure_channel(
            self.address, options=channel_options(max_attempts, initial_backoff_s)
        )
        self._stub: AuthServiceAsyncStub = auth_pb2_grpc.AuthServiceStub(self._channel)

    async def close(self) -> None:
        if self._owned:
            await self._channel.close()

    async def __aenter__(self) -> AsyncAuthClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _timeout(self, timeout_s: float | None) -> float:
        return self.timeout_s if timeout_s is None else timeout_s

    async def issue(
        self,
        subject: str,
        audience: Sequence[str] = (),
        *,
        scope: str = "",
        claims: Mapping[str, object] | None = None,
        client_id: str = "",
        expires_in: int = 0,
        refresh_token: bool = False,
        timeout_s: float | None = None,
    ) -> TokenGrant:
        request = issue_request(
            subject, tuple(audience), scope, claims, client_id, expires_in, refresh_token
        )
        try:
            return grant_from(await self._stub.Issue(request, timeout=self._timeout(timeout_s)))
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    async def verify(
        self,
        token: str,
        *,
        audience: str = "",
        required_scopes: Sequence[str] = (),
        timeout_s: float | None = None,
    ) -> VerifiedClaims:
        request = auth_pb2.VerifyRequest(
            token=token, audience=audience, required_scopes=list(required_scopes)
        )
        try:
            reply = await self._stub.Verify(request, timeout=self._timeout(timeout_s))
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return claims_from(reply)

    async def verify_batch(
        self,
        items: Iterable[str | VerifyItem],
        *,
        audience: str = "",
        required_scopes: Sequence[str] = (),
        timeout_s: float | None = None,
    ) -> list[VerifiedClaims | AuthClientError]:
        """As `AuthClient.verify_batch`: item errors returned, whole-call failures raised."""
        request = batch_request(items, audience, required_scopes)
        try:
            reply = await self._stub.VerifyBatch(request, timeout=self._timeout(timeout_s))
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return batch_results(reply, len(request.requests))

    def _watch(
        self, request: auth_pb2.WatchRequest
    ) -> grpc.aio.UnaryStreamCall[auth_pb2.WatchRequest, auth_pb2.WatchEvent]:
        """The Watch stream, for the server interceptor's watcher (`_watch.AsyncWatcher`):
        no deadline, since it lives as long as the interceptor; cancelled to end it."""
        return self._stub.Watch(request)

    async def refresh(
        self, refresh_token: str, *, scope: str = "", timeout_s: float | None = None
    ) -> TokenGrant:
        request = auth_pb2.RefreshRequest(refresh_token=refresh_token, scope=scope)
        try:
            reply = await self._stub.Refresh(request, timeout=self._timeout(timeout_s))
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return grant_from(reply)

    async def introspect(
        self, token: str, *, token_type_hint: str = "", timeout_s: float | None = None
    ) -> Introspection:
        request = auth_pb2.IntrospectRequest(token=token, token_type_hint=token_type_hint)
        try:
            reply = await self._stub.Introspect(request, timeout=self._timeout(timeout_s))
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return introspection_from(reply)

    async def revoke(
        self, token: str, *, token_type_hint: str = "", timeout_s: float | None = None
    ) -> None:
        request = auth_pb2.RevokeRequest(token=token, token_type_hint=token_type_hint)
        try:
            await self._stub.Revoke(request, timeout=self._timeout(timeout_s))
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    async def get_jwks(self, *, timeout_s: float | None = None) -> dict[str, object]:
        request = auth_pb2.GetJwksRequest()
        try:
            reply = await self._stub.GetJwks(request, timeout=self._timeout(timeout_s))
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        document: dict[str, object] = json.loads(reply.jwks)
        return document
