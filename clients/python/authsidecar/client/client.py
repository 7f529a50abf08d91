"""`AuthClient`: the sidecar's calls from synchronous code.

One address string (`unix:/run/authsidecar/auth.sock` or `127.0.0.1:50051`, default
`$AUTHSIDECAR_ADDR`), a deadline on every call (`timeout_s`, per call or per client), and
grpc's own retry with backoff on UNAVAILABLE only (see `_transport`). Failures are raised as
`AuthClientError` subclasses carrying the sidecar's `reason`. Issue is served only on the
sidecar's admin socket: give that address to the client that issues.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType

import grpc

from authsidecar.client._transport import channel_options, resolve_address
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

DEFAULT_TIMEOUT_S = 5.0


class AuthClient:
    """A blocking client for one sidecar; thread-safe, and reusable until `close()`."""

    def __init__(
        self,
        address: str | None = None,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_attempts: int = 4,
        initial_backoff_s: float = 0.1,
        channel: grpc.Channel | None = None,
    ) -> None:
        """
        Args:
            address: `unix:/path` or `host:port`; default `$AUTHSIDECAR_ADDR`.
            timeout_s: the deadline of each call, retries included.
            max_attempts: tries per call on UNAVAILABLE (first one included, at most 5).
            initial_backoff_s: the first retry's backoff; it doubles on each retry.
            channel: use this channel (e.g. with interceptors) instead of making one; the
                client then does not close it.
        """
        self.address = resolve_address(address)
        self.timeout_s = timeout_s
        self._owned = channel is None
        self._channel = channel or grpc.insecure_channel(
            self.address, options=channel_options(max_attempts, initial_backoff_s)
        )
        self._stub = auth_pb2_grpc.AuthServiceStub(self._channel)

    def close(self) -> None:
        if self._owned:
            self._channel.close()

    def __enter__(self) -> AuthClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _timeout(self, timeout_s: float | None) -> float:
        return self.timeout_s if timeout_s is None else timeout_s

    def issue(
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
        """Mint an access token (admin socket only, else PermissionDeniedError)."""
        request = issue_request(
            subject, tuple(audience), scope, claims, client_id, expires_in, refresh_token
        )
        try:
            return grant_from(self._stub.Issue(request, timeout=self._timeout(timeout_s)))
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    def verify(
        self,
        token: str,
        *,
        audience: str = "",
        required_scopes: Sequence[str] = (),
        timeout_s: float | None = None,
    ) -> VerifiedClaims:
        """The token's claims, or TokenInvalidError / PermissionDeniedError with the reason."""
        request = auth_pb2.VerifyRequest(
            token=token, audience=audience, required_scopes=list(required_scopes)
        )
        try:
            return claims_from(self._stub.Verify(request, timeout=self._timeout(timeout_s)))
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    def verify_batch(
        self,
        items: Iterable[str | VerifyItem],
        *,
        audience: str = "",
        required_scopes: Sequence[str] = (),
        timeout_s: float | None = None,
    ) -> list[VerifiedClaims | AuthClientError]:
        """One VerifyBatch call: per item, what `verify` returns or the error it would raise.

        Item errors are returned, not raised, so one bad token never hides the others; a
        bare token takes `audience`/`required_scopes`, a `VerifyItem` brings its own. Only a
        failure of the whole call is raised, as `verify` raises it (also a batch over the
        sidecar's cap, 256 by default: InvalidRequestError / INVALID_REQUEST).
        """
        request = batch_request(items, audience, required_scopes)
        try:
            reply = self._stub.VerifyBatch(request, timeout=self._timeout(timeout_s))
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return batch_results(reply, len(request.requests))

    def _verify_batch_future(
        self, request: auth_pb2.VerifyBatchRequest, timeout_s: float
    ) -> grpc.Future[auth_pb2.VerifyBatchResponse]:
        """VerifyBatch without blocking, for `VerifyBatcher`: the thread that sends a batch
        must not wait past its own deadline for batch-mates that have longer ones."""
        return self._stub.VerifyBatch.future(request, timeout=timeout_s)

    def _watch(self, request: auth_pb2.WatchRequest) -> grpc._CallIterator[auth_pb2.WatchEvent]:
        """The Watch stream, for the server interceptor's watcher (`_watch.ThreadWatcher`):
        no deadline, since it lives as long as the interceptor; cancelled to end it."""
        return self._stub.Watch(request)

    def refresh(
        self, refresh_token: str, *, scope: str = "", timeout_s: float | None = None
    ) -> TokenGrant:
        """Rotate: the presented refresh token is retired; keep the returned one."""
        request = auth_pb2.RefreshRequest(refresh_token=refresh_token, scope=scope)
        try:
            return grant_from(self._stub.Refresh(request, timeout=self._timeout(timeout_s)))
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    def introspect(
        self, token: str, *, token_type_hint: str = "", timeout_s: float | None = None
    ) -> Introspection:
        request = auth_pb2.IntrospectRequest(token=token, token_type_hint=token_type_hint)
        try:
            reply = self._stub.Introspect(request, timeout=self._timeout(timeout_s))
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return introspection_from(reply)

    def revoke(
        self, token: str, *, token_type_hint: str = "", timeout_s: float | None = None
    ) -> None:
        """Revoke a token (a refresh token with its family); unknown tokens succeed too."""
        request = auth_pb2.RevokeRequest(token=token, token_type_hint=token_type_hint)
        try:
            self._stub.Revoke(request, timeout=self._timeout(timeout_s))
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    def get_jwks(self, *, timeout_s: float | None = None) -> dict[str, object]:
        """The public JWKS document (RFC 7517 section 5) as parsed JSON."""
        try:
            reply = self._stub.GetJwks(auth_pb2.GetJwksRequest(), timeout=self._timeout(timeout_s))
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        document: dict[str, object] = json.loads(reply.jwks)
        return document
