"""What `AuthClient` and `AsyncAuthClient` share: each RPC as data, and the client's settings.

Every sidecar call is one `Call`: the stub method, the request built from the caller's
arguments, and the function that turns the reply into the typed result. The two clients only
differ in how they send it (`_client.py` blocks, `_async_client.py` awaits, and both raise
`_errors.from_rpc_error` of a failure); building the request, mapping the reply, the default
deadline and the retry policy (`_transport.py`) are written once, here, so the two cannot
drift apart.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, Generic, NamedTuple, TypeVar

from google.protobuf.message import Message

from authsidecar.client._errors import AuthClientError
from authsidecar.client._models import (
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
from authsidecar.client._transport import channel_options, resolve_address
from authsidecar.v1 import auth_pb2, auth_pb2_grpc

DEFAULT_TIMEOUT_S = 5.0

R = TypeVar("R")
C = TypeVar("C")


class Call(NamedTuple, Generic[R]):
    """One unary RPC: `method` of the stub, its `request`, and `result(reply)`. A tuple: it
    is made on every call, and a frozen dataclass costs about 0.5 µs more to build."""

    method: str
    request: Message
    result: Callable[[Any], R]


def issue(
    subject: str,
    audience: Sequence[str],
    scope: str,
    claims: Mapping[str, object] | None,
    client_id: str,
    expires_in: int,
    refresh_token: bool,
) -> Call[TokenGrant]:
    request = issue_request(
        subject, tuple(audience), scope, claims, client_id, expires_in, refresh_token
    )
    return Call("Issue", request, grant_from)


def verify(token: str, audience: str, required_scopes: Sequence[str]) -> Call[VerifiedClaims]:
    request = auth_pb2.VerifyRequest(
        token=token, audience=audience, required_scopes=list(required_scopes)
    )
    return Call("Verify", request, claims_from)


def verify_batch(
    items: Iterable[str | VerifyItem], audience: str, required_scopes: Sequence[str]
) -> Call[list[VerifiedClaims | AuthClientError]]:
    request = batch_request(items, audience, required_scopes)
    expected = len(request.requests)
    return Call("VerifyBatch", request, lambda reply: batch_results(reply, expected))


def refresh(refresh_token: str, scope: str) -> Call[TokenGrant]:
    request = auth_pb2.RefreshRequest(refresh_token=refresh_token, scope=scope)
    return Call("Refresh", request, grant_from)


def introspect(token: str, token_type_hint: str) -> Call[Introspection]:
    request = auth_pb2.IntrospectRequest(token=token, token_type_hint=token_type_hint)
    return Call("Introspect", request, introspection_from)


def revoke(token: str, token_type_hint: str) -> Call[None]:
    request = auth_pb2.RevokeRequest(token=token, token_type_hint=token_type_hint)
    return Call("Revoke", request, lambda _reply: None)


def _jwks(reply: auth_pb2.GetJwksResponse) -> dict[str, object]:
    document: dict[str, object] = json.loads(reply.jwks)
    return document


def get_jwks() -> Call[dict[str, object]]:
    return Call("GetJwks", auth_pb2.GetJwksRequest(), _jwks)


class ClientBase(Generic[C]):
    """The address, the default deadline and the channel (made here unless given).

    `_connect` is the channel factory of the flavour: `grpc.insecure_channel` or
    `grpc.aio.insecure_channel`. A channel handed in belongs to the caller and is not closed.
    """

    _connect: ClassVar[Callable[..., Any]]

    def __init__(
        self,
        address: str | None = None,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_attempts: int = 4,
        initial_backoff_s: float = 0.1,
        channel: C | None = None,
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
        options = channel_options(max_attempts, initial_backoff_s)
        made: C = channel if channel is not None else type(self)._connect(self.address, options)
        self._channel = made
        # grpc makes the same stub class over either channel; the shells type what they use.
        either: Any = made
        self._stub: Any = auth_pb2_grpc.AuthServiceStub(either)

    def _timeout(self, timeout_s: float | None) -> float:
        return self.timeout_s if timeout_s is None else timeout_s
