"""AuthService over gRPC: proto <-> domain conversion and error mapping, nothing else."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format, struct_pb2

from authsidecar.v1 import auth_pb2, auth_pb2_grpc
from sidecar.calls import record_reason
from sidecar.config import WatchSettings
from sidecar.errors import (
    AuthSidecarError,
    CallerNotAllowedError,
    ClaimError,
    NoSigningKeyError,
)
from sidecar.tokens.model import Claims, TokenGrant, VerifiedToken
from sidecar.tokens.service import TokenService
from sidecar.transport.audit import audit_issued, audit_refusal, audit_revoked
from sidecar.transport.drain import CallGate
from sidecar.transport.ratelimit import RateLimitedLog
from sidecar.transport.status import internal_status, to_status
from sidecar.transport.structs import fill_struct
from sidecar.transport.watch import WatchStreams

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
            record_reason(error.reason)
            audit_refusal(method.__name__, error, request)
        except Exception:
            log.exception("%s failed unexpectedly", method.__name__)
            status = internal_status()
        await context.abort(status.code, status.details, status.trailing_metadata)
        raise AssertionError("unreachable: abort raises")  # pragma: no cover

    return wrapper


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    # Struct.update gives every JSON value its protobuf form (ints become doubles) and the
    # same bytes as the JSON round trip it replaced, at a quarter of the cost (issue 7).
    struct.update(values)
    return struct


def _fill_verify_response(response: auth_pb2.VerifyResponse, verified: VerifiedToken) -> None:
    """In place, so a VerifyBatch item is built inside its parent: no message copies."""
    claims = verified.claims
    response.sub = claims.sub
    response.iss = claims.iss
    response.aud.extend(claims.aud)
    response.exp = claims.exp
    response.iat = claims.iat
    response.nbf = claims.nbf
    response.jti = claims.jti
    response.scope = claims.scope
    response.client_id = claims.client_id
    response.kid = verified.kid
    # The bytes of `response.claims.update(claims.all)`, ~40% cheaper (transport/structs.py).
    fill_struct(response.claims, claims.all)


def _verify_response(
    verified: VerifiedToken, refusals: RateLimitedLog | None = None
) -> auth_pb2.VerifyResponse:
    response = auth_pb2.VerifyResponse()
    try:
        _fill_verify_response(response, verified)
    except Exception:
        raise _unrepresentable(verified.claims.all, refusals) from None
    return response


# A verified token whose claims a response cannot carry (issue 13, finding 3): a number a
# protobuf Struct (a double) cannot hold, a string protobuf cannot encode. The verifier
# refuses such claims itself (CLAIM_INVALID); this is the transport's backstop, so that even
# a value it missed is refused with that reason, never INTERNAL, and a VerifyBatch item that
# hits it fails alone. Logged at most once a minute (`unrepresentable_log`).
_CLAIM_NAME_MAX = 64


def unrepresentable_log() -> RateLimitedLog:
    return RateLimitedLog(
        log, "verified token(s) refused CLAIM_INVALID: a claim cannot be carried in a response"
    )


def _unrepresentable(values: dict[str, Any], refusals: RateLimitedLog | None) -> ClaimError:
    """CLAIM_INVALID naming the first claim that cannot be put in a Struct, when its name
    itself is printable and short (it goes into ErrorInfo metadata), else "claims"."""
    culprit = "claims"
    for name, value in values.items():
        try:
            fill_struct(struct_pb2.Struct(), {name: value})
        except Exception:
            if name.isprintable() and len(name) <= _CLAIM_NAME_MAX and name.isascii():
                culprit = name
            break
    if refusals is not None:
        refusals.note(culprit)
    return ClaimError(culprit, "claim value cannot be represented")


# Built responses kept for tokens served from the verify cache: building one (Struct included)
# costs ~3x a cache hit. Bounded by entries; ~2 KiB each (docs/performance.md).
MAX_MEMO_ENTRIES = 1024


class _ResponseMemo:
    """VerifyResponse by the identity of a VerifiedToken from the verify cache.

    A serialisation memo only, and so kept in transport: it decides nothing. It is consulted
    after `TokenService.verify` returned, i.e. after every check of the call ran (tokens/
    verifier.py owns what is cached and what is re-checked), and it maps a verified result to
    its protobuf form, a pure function of the (frozen) VerifiedToken. A refused token never
    reaches it; a token the verifier accepts again gets the message built the first time.

    Keyed by `id()` and checked with `is`: the memo holds the VerifiedToken itself, so its id
    cannot be reused by another object while the entry lives. A response is never mutated
    after it is built, so handing the same message to several calls is safe.

    Only results the verify cache holds enter (`holds`): any other result is never handed
    out again, and keeping it (and its response) alive made every cold Verify ~4.7 µs
    dearer (HS256 verify + response, thread CPU in-process: 26.3 vs 21.5 µs; issue 15).
    A plain dict emptied when full, not an LRU: an insert is a dict store. Emptying costs a
    hot token one rebuild per `max_entries` stored tokens, and the tokens that matter (a
    service's few, presented on every call) are back after one call.
    """

    def __init__(
        self,
        max_entries: int,
        refusals: RateLimitedLog | None = None,
        holds: Callable[[VerifiedToken], bool] = lambda _: True,
    ) -> None:
        self._entries: dict[int, tuple[VerifiedToken, auth_pb2.VerifyResponse]] = {}
        self._max_entries = max_entries
        self._refusals = refusals
        self._holds = holds

    def __len__(self) -> int:
        return len(self._entries)

    def response(self, verified: VerifiedToken) -> auth_pb2.VerifyResponse:
        entries = self._entries
        entry = entries.get(id(verified))
        if entry is not None and entry[0] is verified:
            return entry[1]
        response = _verify_response(verified, self._refusals)
        if self._max_entries > 0 and self._holds(verified):
            if len(entries) >= self._max_entries:
                entries.clear()
            entries[id(verified)] = (verified, response)
        return response


# ErrorInfo reasons by name -> the enum VerifyBatch carries; anything unlisted is internal.
_REASONS = {name: number for name, number in auth_pb2.ErrorReason.items() if number}


def _batch_response(
    outcomes: list[VerifiedToken | AuthSidecarError], refusals: RateLimitedLog | None = None
) -> auth_pb2.VerifyBatchResponse:
    response = auth_pb2.VerifyBatchResponse()
    add = response.results.add
    for outcome in outcomes:
        item = add()
        if isinstance(outcome, AuthSidecarError):
            if outcome.reason not in _REASONS:
                log.error("VerifyBatch item failed with unlisted reason %s", outcome.reason)
            item.error = _REASONS.get(outcome.reason, auth_pb2.INTERNAL_ERROR)
            continue
        try:
            _fill_verify_response(item.ok, outcome)
        except Exception:
            # This item alone fails; the others keep their results.
            item.Clear()
            item.error = _REASONS[_unrepresentable(outcome.claims.all, refusals).reason]
    return response


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

    def __init__(
        self,
        service: TokenService,
        *,
        allow_issue: bool,
        watch: WatchSettings | None = None,
        gate: CallGate | None = None,
    ) -> None:
        self._service = service
        self._allow_issue = allow_issue
        interval_ms = (watch or WatchSettings()).heartbeat_interval_ms
        self._watch = WatchStreams(
            service.events,
            heartbeat_interval_ms=interval_ms,
            track=gate.track if gate is not None else None,
        )
        # Only tokens served from the verify cache come back as the same object, so a memo
        # larger than the cache could never hit.
        cache = service.verify_cache
        self._refusals = unrepresentable_log()
        self._memo = _ResponseMemo(
            min(cache.max_entries, MAX_MEMO_ENTRIES) if cache.enabled else 0,
            self._refusals,
            holds=cache.holds,
        )

    def _require_signing_key(self) -> None:
        """A verify-only sidecar (issue 14) mints nothing: one clear refusal, before any
        token is looked at (a Refresh must not rotate what it cannot replace)."""
        if self._service.ring.signing_key is None:
            raise NoSigningKeyError

    @_mapped
    async def Issue(
        self, request: auth_pb2.IssueRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> auth_pb2.IssueResponse:
        if not self._allow_issue:
            raise CallerNotAllowedError("Issue is served on the admin socket only")
        self._require_signing_key()
        grant = await self._service.issue(
            subject=request.subject,
            audience=list(request.audience),
            scope=request.scope,
            claims=json_format.MessageToDict(request.claims),
            client_id=request.client_id,
            expires_in=request.expires_in,
            refresh_token=request.refresh_token,
            time_left_s=context.time_remaining(),
        )
        audit_issued("issue", sub=grant.subject, jti=grant.jti, refresh=bool(grant.refresh_token))
        return _grant(auth_pb2.IssueResponse, grant)

    @_mapped
    async def Verify(
        self, request: auth_pb2.VerifyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> auth_pb2.VerifyResponse:
        verified = await self._service.verify_refetching(
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
        outcomes = await self._service.verify_batch_refetching(
            [(r.token, r.audience or None, r.required_scopes) for r in request.requests]
        )
        return _batch_response(outcomes, self._refusals)

    @_mapped
    async def Refresh(
        self, request: auth_pb2.RefreshRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> auth_pb2.RefreshResponse:
        self._require_signing_key()
        grant = await self._service.refresh(
            request.refresh_token, scope=request.scope, time_left_s=context.time_remaining()
        )
        audit_issued("refresh", sub=grant.subject, jti=grant.jti, refresh=True)
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
        try:
            return auth_pb2.IntrospectResponse(
                active=True,
                token_type=result.token_type,
                username=username if isinstance(username, str) else "",
                claims=_struct(claims.all),
                **_claim_fields(claims),
            )
        except Exception:
            # Refused like any invalid token: inactive, the reason in logs and metrics.
            record_reason(_unrepresentable(claims.all, self._refusals).reason)
            return auth_pb2.IntrospectResponse(active=False)

    @_mapped
    async def Revoke(
        self, request: auth_pb2.RevokeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> auth_pb2.RevokeResponse:
        await self._service.revoke(request.token, time_left_s=context.time_remaining())
        audit_revoked(request.token, self._service.max_token_bytes)
        return auth_pb2.RevokeResponse()

    @_mapped
    async def GetJwks(
        self, request: auth_pb2.GetJwksRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> auth_pb2.GetJwksResponse:
        return auth_pb2.GetJwksResponse(jwks=json.dumps(self._service.jwks(), sort_keys=True))

    async def Watch(
        self, request: auth_pb2.WatchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncGenerator[auth_pb2.WatchEvent, None]:
        """Server streaming (issue 15): transport/watch.py. An async generator, so the call
        layers wrap it with their guard like any streaming handler (transport/layers.py)."""
        async with contextlib.aclosing(self._watch.stream(request, context)) as events:
            async for event in events:
                yield event
