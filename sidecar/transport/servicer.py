"""AuthService's handlers over gRPC: each RPC's request to a domain call, its result to a reply.

Thin on purpose (SPIRE's workload handler): the servicer declares what it needs of the token
engine (`TokenFlows`, one call per RPC) and is handed that and the few other parts it uses
(`AuthParts`) by the app, the composition root; it reaches into nothing. Response building is
transport/responses.py; errors become a status at one boundary (`_mapped`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import grpc

from authsidecar.v1 import auth_pb2, auth_pb2_grpc
from sidecar.calls import record_reason
from sidecar.config import WatchSettings
from sidecar.errors import AuthSidecarError, CallerNotAllowedError, NoSigningKeyError
from sidecar.tokens.event_log import EventLog
from sidecar.tokens.model import Introspection, TokenGrant, VerifiedToken
from sidecar.transport.audit import audit_issued, audit_refusal, audit_revoked
from sidecar.transport.drain import CallGate
from sidecar.transport.layers import Behavior, UnaryLayer
from sidecar.transport.responses import (
    ResponseMemo,
    batch_response,
    grant_response,
    introspect_response,
    unrepresentable_log,
)
from sidecar.transport.status import internal_status, to_status
from sidecar.transport.structs import json_values
from sidecar.transport.verify_stream import VERIFY_STREAM, VerifyStreams
from sidecar.transport.watch import WatchStreams

__all__ = ["AuthParts", "AuthServicer", "TokenFlows"]

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, grpc.aio.ServicerContext[Req, Resp]], Awaitable[Resp]]


class TokenFlows(Protocol):
    """What AuthService asks of the token engine: one call per RPC, plain values in and out
    (tokens/service.py's TokenService is the one implementation)."""

    async def issue(
        self,
        *,
        subject: str,
        audience: Sequence[str] = (),
        scope: str = "",
        claims: Mapping[str, Any] | None = None,
        client_id: str = "",
        expires_in: int = 0,
        refresh_token: bool = False,
        time_left_s: float | None = None,
    ) -> TokenGrant: ...

    async def verify_refetching(
        self, token: str, *, audience: str | None = None, required_scopes: Collection[str] = ()
    ) -> VerifiedToken: ...

    async def verify_batch_refetching(
        self, items: Sequence[tuple[str, str | None, Collection[str]]]
    ) -> list[VerifiedToken | AuthSidecarError]: ...

    async def refresh(
        self, refresh_token: str, *, scope: str = "", time_left_s: float | None = None
    ) -> TokenGrant: ...

    async def introspect(self, token: str) -> Introspection: ...

    async def revoke(self, token: str, *, time_left_s: float | None = None) -> None: ...

    def jwks(self) -> dict[str, Any]: ...

    def can_sign(self) -> bool: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthParts:
    """Everything AuthService's handlers use, each part by itself (the app builds it)."""

    flows: TokenFlows
    # The Watch stream's source (tokens/event_log.py).
    events: EventLog
    # The token size cap: Revoke's audit line reads the claimed ids only within it.
    max_token_bytes: int
    # Verify responses kept for tokens the verify cache serves again (responses.memo_size).
    memo_entries: int
    # Whether the verify cache holds a result (VerifyCache.holds): only those enter the memo.
    memo_holds: Callable[[VerifiedToken], bool]


def _mapped(method: Handler[Req, Resp]) -> Handler[Req, Resp]:
    """The error boundary: domain errors become status + ErrorInfo; anything else INTERNAL.

    An unexpected exception is logged here with its traceback (server side only) and the
    caller gets a bare INTERNAL / INTERNAL_ERROR: no exception text crosses the wire.
    """

    @functools.wraps(method)
    async def wrapper(
        self: Any, request: Req, context: grpc.aio.ServicerContext[Req, Resp]
    ) -> Resp:
        try:
            return await method(self, request, context)
        except AuthSidecarError as error:
            status = to_status(error)
            record_reason(error.reason)
            audit_refusal(method.__name__, error, request)
        except Exception:
            log.exception("%s failed unexpectedly", method.__name__)
            status = internal_status()
        await context.abort(status.code, status.details, status.trailing_metadata)
        raise AssertionError("unreachable: abort raises")  # pragma: no cover

    return wrapper


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    """`allow_issue` is true only on the admin listener: minting is privileged."""

    def __init__(
        self,
        parts: AuthParts,
        *,
        allow_issue: bool,
        watch: WatchSettings | None = None,
        gate: CallGate | None = None,
        message_layers: Sequence[UnaryLayer] = (),
    ) -> None:
        """`message_layers`: the unary call layers (transport/server.py), put around each
        VerifyStream message as around a VerifyBatch call."""
        self._flows = parts.flows
        self._max_token_bytes = parts.max_token_bytes
        self._allow_issue = allow_issue
        self._watch = WatchStreams(
            parts.events,
            heartbeat_interval_ms=(watch or WatchSettings()).heartbeat_interval_ms,
            track=gate.track if gate is not None else None,
        )
        self._refusals = unrepresentable_log()
        self._memo = ResponseMemo(parts.memo_entries, self._refusals, holds=parts.memo_holds)
        per_message: Behavior = self.VerifyBatch
        for layer in reversed(message_layers):
            per_message = layer(per_message, VERIFY_STREAM)
        self._verify_streams = VerifyStreams(per_message, gate)

    def _require_signing_key(self) -> None:
        """A verify-only sidecar (issue 14) mints nothing: one clear refusal, before any
        token is looked at (a Refresh must not rotate what it cannot replace)."""
        if not self._flows.can_sign():
            raise NoSigningKeyError

    @_mapped
    async def Issue(
        self, request: auth_pb2.IssueRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> auth_pb2.IssueResponse:
        if not self._allow_issue:
            raise CallerNotAllowedError("Issue is served on the admin socket only")
        self._require_signing_key()
        grant = await self._flows.issue(
            subject=request.subject,
            audience=list(request.audience),
            scope=request.scope,
            claims=json_values(request.claims, "claims"),
            client_id=request.client_id,
            expires_in=request.expires_in,
            refresh_token=request.refresh_token,
            time_left_s=context.time_remaining(),
        )
        audit_issued("issue", sub=grant.subject, jti=grant.jti, refresh=bool(grant.refresh_token))
        return grant_response(auth_pb2.IssueResponse, grant)

    @_mapped
    async def Verify(
        self, request: auth_pb2.VerifyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> auth_pb2.VerifyResponse:
        verified = await self._flows.verify_refetching(
            request.token,
            audience=request.audience or None,
            required_scopes=tuple(request.required_scopes),
        )
        return self._memo.response(verified)

    @_mapped
    async def VerifyBatch(
        self, request: auth_pb2.VerifyBatchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> auth_pb2.VerifyBatchResponse:
        # The repeated field itself is the scopes' Collection: no tuple copy per item (issue 7).
        outcomes = await self._flows.verify_batch_refetching(
            [(r.token, r.audience or None, r.required_scopes) for r in request.requests]
        )
        return batch_response(outcomes, self._refusals)

    async def VerifyStream(
        self,
        request_iterator: AsyncIterator[auth_pb2.VerifyBatchRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncGenerator[auth_pb2.VerifyBatchResponse, None]:
        """VerifyBatch per message on an open stream (issue 15): transport/verify_stream.py."""
        async with contextlib.aclosing(
            self._verify_streams.stream(request_iterator, context)
        ) as responses:
            async for response in responses:
                yield response

    @_mapped
    async def Refresh(
        self, request: auth_pb2.RefreshRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> auth_pb2.RefreshResponse:
        self._require_signing_key()
        grant = await self._flows.refresh(
            request.refresh_token, scope=request.scope, time_left_s=context.time_remaining()
        )
        audit_issued("refresh", sub=grant.subject, jti=grant.jti, refresh=True)
        return grant_response(auth_pb2.RefreshResponse, grant)

    @_mapped
    async def Introspect(
        self, request: auth_pb2.IntrospectRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> auth_pb2.IntrospectResponse:
        return introspect_response(await self._flows.introspect(request.token), self._refusals)

    @_mapped
    async def Revoke(
        self, request: auth_pb2.RevokeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> auth_pb2.RevokeResponse:
        await self._flows.revoke(request.token, time_left_s=context.time_remaining())
        audit_revoked(request.token, self._max_token_bytes)
        return auth_pb2.RevokeResponse()

    @_mapped
    async def GetJwks(
        self, request: auth_pb2.GetJwksRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> auth_pb2.GetJwksResponse:
        return auth_pb2.GetJwksResponse(jwks=json.dumps(self._flows.jwks(), sort_keys=True))

    async def Watch(
        self, request: auth_pb2.WatchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncGenerator[auth_pb2.WatchEvent, None]:
        """Server streaming (issue 15): transport/watch.py. An async generator, so the call
        layers wrap it with their guard like any streaming handler (transport/layers.py)."""
        async with contextlib.aclosing(self._watch.stream(request, context)) as events:
            async for event in events:
                yield event
