"""AuthService over gRPC: proto <-> domain conversion and error mapping, nothing else."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format, struct_pb2

from authsidecar.v1 import auth_pb2, auth_pb2_grpc
from sidecar.errors import AuthSidecarError, CallerNotAllowedError
from sidecar.tokens.model import Claims, TokenGrant
from sidecar.tokens.service import TokenService
from sidecar.transport.status import internal_status, to_status

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, grpc.aio.ServicerContext[Req, Resp]], Awaitable[Resp]]


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
            log.info("%s refused: %s", method.__name__, error.reason)
        except Exception:
            log.exception("%s failed unexpectedly", method.__name__)
            status = internal_status()
        await context.abort(status.code, status.details, status.trailing_metadata)
        raise AssertionError("unreachable: abort raises")  # pragma: no cover

    return wrapper


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    # Through JSON so nested values take their protobuf forms (ints become doubles there).
    json_format.Parse(json.dumps(values), struct)
    return struct


_GrantResponse = TypeVar("_GrantResponse", auth_pb2.IssueResponse, auth_pb2.RefreshResponse)


def _grant(cls: type[_GrantResponse], grant: TokenGrant) -> _GrantResponse:
    return cls(
        access_token=grant.access_token,
        token_type=grant.token_type,
        expires_in=grant.expires_in,
        refresh_token=grant.refresh_token,
        scope=grant.scope,
    )


def _claim_fields(claims: Claims) -> dict[str, Any]:
    return {
        "sub": claims.sub,
        "iss": claims.iss,
        "aud": list(claims.aud),
        "exp": claims.exp,
        "iat": claims.iat,
        "nbf": claims.nbf,
        "jti": claims.jti,
        "scope": claims.scope,
        "client_id": claims.client_id,
    }


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    """`allow_issue` is true only on the admin listener: minting is privileged."""

    def __init__(self, service: TokenService, *, allow_issue: bool) -> None:
        self._service = service
        self._allow_issue = allow_issue

    @_mapped
    async def Issue(
        self, request: auth_pb2.IssueRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> auth_pb2.IssueResponse:
        if not self._allow_issue:
            raise CallerNotAllowedError("Issue is served on the admin socket only")
        grant = await self._service.issue(
            subject=request.subject,
            audience=list(request.audience),
            scope=request.scope,
            claims=json_format.MessageToDict(request.claims),
            client_id=request.client_id,
            expires_in=request.expires_in,
            refresh_token=request.refresh_token,
        )
        return _grant(auth_pb2.IssueResponse, grant)

    @_mapped
    async def Verify(
        self, request: auth_pb2.VerifyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> auth_pb2.VerifyResponse:
        verified = self._service.verify(
            request.token,
            audience=request.audience or None,
            required_scopes=tuple(request.required_scopes),
        )
        claims = verified.claims
        return auth_pb2.VerifyResponse(
            **_claim_fields(claims), kid=verified.kid, claims=_struct(claims.all)
        )

    @_mapped
    async def Refresh(
        self, request: auth_pb2.RefreshRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> auth_pb2.RefreshResponse:
        grant = await self._service.refresh(request.refresh_token, scope=request.scope)
        return _grant(auth_pb2.RefreshResponse, grant)

    @_mapped
    async def Introspect(
        self, request: auth_pb2.IntrospectRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> auth_pb2.IntrospectResponse:
        result = await self._service.introspect(request.token)
        if not result.active or result.claims is None:
            return auth_pb2.IntrospectResponse(active=False)
        claims = result.claims
        username = claims.all.get("username")
        return auth_pb2.IntrospectResponse(
            active=True,
            token_type=result.token_type,
            username=username if isinstance(username, str) else "",
            claims=_struct(claims.all),
            **_claim_fields(claims),
        )

    @_mapped
    async def Revoke(
        self, request: auth_pb2.RevokeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> auth_pb2.RevokeResponse:
        await self._service.revoke(request.token)
        return auth_pb2.RevokeResponse()

    @_mapped
    async def GetJwks(
        self, request: auth_pb2.GetJwksRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> auth_pb2.GetJwksResponse:
        return auth_pb2.GetJwksResponse(jwks=json.dumps(self._service.jwks(), sort_keys=True))
