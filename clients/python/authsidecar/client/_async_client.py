"""`AsyncAuthClient`: the sidecar's calls from asyncio code.

Same shape and semantics as `AuthClient` (address, deadlines, retry on UNAVAILABLE only,
typed results and errors: all built in `_calls.py`, shared with it) over a `grpc.aio`
channel, so no call blocks the event loop. Construct it inside a running event loop.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TypeVar

import grpc

from authsidecar.client import _calls
from authsidecar.client._calls import Call, ClientBase
from authsidecar.client._closing import AsyncClosing
from authsidecar.client._errors import AuthClientError, from_rpc_error
from authsidecar.client._models import Introspection, TokenGrant, VerifiedClaims, VerifyItem
from authsidecar.v1 import auth_pb2

R = TypeVar("R")


class AsyncAuthClient(AsyncClosing, ClientBase[grpc.aio.Channel]):
    """An asyncio client for one sidecar; use from the loop it was created in.

    Arguments as for `AuthClient`."""

    _connect = staticmethod(grpc.aio.insecure_channel)

    async def _send(self, call: Call[R], timeout_s: float | None) -> R:
        rpc = getattr(self._stub, call.method)
        try:
            reply = await rpc(call.request, timeout=self._timeout(timeout_s))
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return call.result(reply)

    async def close(self) -> None:
        if self._owned:
            await self._channel.close()

    _aclose = close

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
        call = _calls.issue(subject, audience, scope, claims, client_id, expires_in, refresh_token)
        return await self._send(call, timeout_s)

    async def verify(
        self,
        token: str,
        *,
        audience: str = "",
        required_scopes: Sequence[str] = (),
        timeout_s: float | None = None,
    ) -> VerifiedClaims:
        return await self._send(_calls.verify(token, audience, required_scopes), timeout_s)

    async def verify_batch(
        self,
        items: Iterable[str | VerifyItem],
        *,
        audience: str = "",
        required_scopes: Sequence[str] = (),
        timeout_s: float | None = None,
    ) -> list[VerifiedClaims | AuthClientError]:
        """As `AuthClient.verify_batch`: item errors returned, whole-call failures raised."""
        return await self._send(_calls.verify_batch(items, audience, required_scopes), timeout_s)

    def _watch(
        self, request: auth_pb2.WatchRequest
    ) -> grpc.aio.UnaryStreamCall[auth_pb2.WatchRequest, auth_pb2.WatchEvent]:
        """The Watch stream, for the server interceptor's watcher (`_watch.AsyncWatcher`):
        no deadline, since it lives as long as the interceptor; cancelled to end it."""
        stream: grpc.aio.UnaryStreamCall[auth_pb2.WatchRequest, auth_pb2.WatchEvent]
        stream = self._stub.Watch(request)
        return stream

    def _verify_stream(
        self,
    ) -> grpc.aio.StreamStreamCall[auth_pb2.VerifyBatchRequest, auth_pb2.VerifyBatchResponse]:
        """A VerifyStream, for the batcher's stream (`_verify_stream.AsyncVerifyStream`): no
        deadline, since it lives as long as the batcher; cancelled to end it."""
        stream: grpc.aio.StreamStreamCall[
            auth_pb2.VerifyBatchRequest, auth_pb2.VerifyBatchResponse
        ] = self._stub.VerifyStream()
        return stream

    async def refresh(
        self, refresh_token: str, *, scope: str = "", timeout_s: float | None = None
    ) -> TokenGrant:
        return await self._send(_calls.refresh(refresh_token, scope), timeout_s)

    async def introspect(
        self, token: str, *, token_type_hint: str = "", timeout_s: float | None = None
    ) -> Introspection:
        return await self._send(_calls.introspect(token, token_type_hint), timeout_s)

    async def revoke(
        self, token: str, *, token_type_hint: str = "", timeout_s: float | None = None
    ) -> None:
        await self._send(_calls.revoke(token, token_type_hint), timeout_s)

    async def get_jwks(self, *, timeout_s: float | None = None) -> dict[str, object]:
        return await self._send(_calls.get_jwks(), timeout_s)
