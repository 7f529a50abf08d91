"""`AuthClient`: the sidecar's calls from synchronous code.

One address string (`unix:/run/authsidecar/auth.sock` or `127.0.0.1:50051`, default
`$AUTHSIDECAR_ADDR`), a deadline on every call (`timeout_s`, per call or per client), and
grpc's own retry with backoff on UNAVAILABLE only (see `_transport`). Failures are raised as
`AuthClientError` subclasses carrying the sidecar's `reason`. Issue is served only on the
sidecar's admin socket: give that address to the client that issues.

Requests, replies and errors are built in `_calls.py`, shared with `AsyncAuthClient`; this
class only sends them, blocking.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TypeVar

import grpc

from authsidecar.client import _calls
from authsidecar.client._calls import Call, ClientBase
from authsidecar.client._closing import Closing
from authsidecar.client._errors import AuthClientError, from_rpc_error
from authsidecar.client._models import Introspection, TokenGrant, VerifiedClaims, VerifyItem
from authsidecar.v1 import auth_pb2

R = TypeVar("R")


class AuthClient(Closing, ClientBase[grpc.Channel]):
    """A blocking client for one sidecar; thread-safe, and reusable until `close()`."""

    _connect = staticmethod(grpc.insecure_channel)

    def _send(self, call: Call[R], timeout_s: float | None) -> R:
        try:
            reply = getattr(self._stub, call.method)(call.request, timeout=self._timeout(timeout_s))
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return call.result(reply)

    def close(self) -> None:
        if self._owned:
            self._channel.close()

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
        call = _calls.issue(subject, audience, scope, claims, client_id, expires_in, refresh_token)
        return self._send(call, timeout_s)

    def verify(
        self,
        token: str,
        *,
        audience: str = "",
        required_scopes: Sequence[str] = (),
        timeout_s: float | None = None,
    ) -> VerifiedClaims:
        """The token's claims, or TokenInvalidError / PermissionDeniedError with the reason."""
        return self._send(_calls.verify(token, audience, required_scopes), timeout_s)

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
        return self._send(_calls.verify_batch(items, audience, required_scopes), timeout_s)

    def _verify_batch_future(
        self, request: auth_pb2.VerifyBatchRequest, timeout_s: float
    ) -> grpc.Future[auth_pb2.VerifyBatchResponse]:
        """VerifyBatch without blocking, for `VerifyBatcher`: the thread that sends a batch
        must not wait past its own deadline for batch-mates that have longer ones."""
        future: grpc.Future[auth_pb2.VerifyBatchResponse]
        future = self._stub.VerifyBatch.future(request, timeout=timeout_s)
        return future

    def _watch(self, request: auth_pb2.WatchRequest) -> grpc._CallIterator[auth_pb2.WatchEvent]:
        """The Watch stream, for the server interceptor's watcher (`_watch.ThreadWatcher`):
        no deadline, since it lives as long as the interceptor; cancelled to end it."""
        stream: grpc._CallIterator[auth_pb2.WatchEvent] = self._stub.Watch(request)
        return stream

    def refresh(
        self, refresh_token: str, *, scope: str = "", timeout_s: float | None = None
    ) -> TokenGrant:
        """Rotate: the presented refresh token is retired; keep the returned one."""
        return self._send(_calls.refresh(refresh_token, scope), timeout_s)

    def introspect(
        self, token: str, *, token_type_hint: str = "", timeout_s: float | None = None
    ) -> Introspection:
        return self._send(_calls.introspect(token, token_type_hint), timeout_s)

    def revoke(
        self, token: str, *, token_type_hint: str = "", timeout_s: float | None = None
    ) -> None:
        """Revoke a token (a refresh token with its family); unknown tokens succeed too."""
        self._send(_calls.revoke(token, token_type_hint), timeout_s)

    def get_jwks(self, *, timeout_s: float | None = None) -> dict[str, object]:
        """The public JWKS document (RFC 7517 section 5) as parsed JSON."""
        return self._send(_calls.get_jwks(), timeout_s)
