"""Server interceptors: every incoming call is verified at the sidecar before its handler runs.

For each call that the `AuthPolicy` does not make public: read `authorization: Bearer <token>`,
ask the sidecar's Verify (with the policy's audience and the method's required scopes), then
run the handler with the claims bound for `current_claims()`. Refusals carry the sidecar's
reason in ErrorInfo (domain `authsidecar.v1`): UNAUTHENTICATED for a missing or bad token,
PERMISSION_DENIED for a missing scope, UNAVAILABLE when the sidecar cannot be reached.

The check runs inside the wrapped handler, not in `intercept_service`: in the sync server that
is the worker thread (grpc calls `intercept_service` on its single dispatch thread, which a
Verify would stall for every call), and in asyncio it is an `await`, never a blocking call.

Under load, pass a `VerifyBatcher` / `AsyncVerifyBatcher` instead of the client: its `verify`
means the same, but calls waiting for authentication at the same moment share one VerifyBatch.

Streams are checked once, when they start, like HTTP/2 requests; a token that expires later
does not end them unless `AuthPolicy.check_expiry_per_message` is set, which refuses the
stream (UNAUTHENTICATED / TOKEN_EXPIRED) at the first message received or yielded after `exp`.
The per-message check reads only the verified `exp`, never the sidecar; asyncio handlers that
write with `context.write()` instead of yielding are checked on received messages only.
"""

from __future__ import annotations

import contextvars
import inspect
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeAlias

import grpc

from authsidecar.client._refusal import (
    EXPIRED_MID_STREAM,
    MISSING_TOKEN,
    Refusal,
    bearer_token,
    refusal_for,
)
from authsidecar.client.aio import AsyncAuthClient
from authsidecar.client.batching import AsyncVerifyBatcher, VerifyBatcher
from authsidecar.client.cache import VerifyCache
from authsidecar.client.client import AuthClient
from authsidecar.client.context import bind_claims
from authsidecar.client.errors import AuthClientError
from authsidecar.client.models import VerifiedClaims
from authsidecar.client.policy import AuthPolicy, MethodRule

_Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


def _rebuild(handler: _Handler, **behaviours: Any) -> _Handler:
    """`handler` with its behaviour replaced, serializers kept."""
    return handler._replace(**behaviours)  # type: ignore[attr-defined, no-any-return]


class _Gate:
    """What both interceptors share: the policy, the cache, the expiry clock."""

    def __init__(
        self, policy: AuthPolicy | None, cache: VerifyCache | None, now: Callable[[], float]
    ) -> None:
        self.policy = policy or AuthPolicy()
        self.cache = cache
        self.now = now

    def cached(self, token: str, rule: MethodRule) -> VerifiedClaims | None:
        if self.cache is None:
            return None
        return self.cache.get(token, self.policy.audience, rule.scopes)

    def remember(self, token: str, rule: MethodRule, claims: VerifiedClaims) -> None:
        if self.cache is not None:
            self.cache.put(token, self.policy.audience, rule.scopes, claims)

    def expired(self, claims: VerifiedClaims) -> bool:
        if not self.policy.check_expiry_per_message:
            return False
        return self.now() >= claims.exp + self.policy.expiry_leeway_s


class AuthServerInterceptor(grpc.ServerInterceptor):
    """For `grpc.server(..., interceptors=[AuthServerInterceptor(AuthClient(addr), policy)])`."""

    def __init__(
        self,
        client: AuthClient | VerifyBatcher,
        policy: AuthPolicy | None = None,
        *,
        cache: VerifyCache | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._gate = _Gate(policy, cache, now)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], _Handler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        rule = self._gate.policy.rule(handler_call_details.method)
        if rule.public:
            return handler
        token = bearer_token(handler_call_details.invocation_metadata)
        return self._wrap(handler, token, rule)

    def _authenticate(
        self, token: str | None, rule: MethodRule, context: grpc.ServicerContext
    ) -> VerifiedClaims:
        if token is None:
            context.abort_with_status(MISSING_TOKEN.status())
        claims = self._gate.cached(token, rule)
        if claims is None:
            try:
                claims = self._client.verify(
                    token, audience=self._gate.policy.audience, required_scopes=rule.scopes
                )
            except AuthClientError as error:
                context.abort_with_status(refusal_for(error).status())
            self._gate.remember(token, rule, claims)
        return claims

    def _wrap(self, handler: _Handler, token: str | None, rule: MethodRule) -> _Handler:
        gate = self._gate

        def start(context: grpc.ServicerContext) -> tuple[contextvars.Context, VerifiedClaims]:
            claims = self._authenticate(token, rule, context)
            # A fresh context per call: pooled worker threads never see another call's claims.
            call_context = contextvars.copy_context()
            call_context.run(bind_claims, claims)
            return call_context, claims

        def check(context: grpc.ServicerContext, claims: VerifiedClaims) -> None:
            if gate.expired(claims):
                context.abort_with_status(EXPIRED_MID_STREAM.status())

        def requests(it: Iterator[Any], context: Any, claims: VerifiedClaims) -> Iterator[Any]:
            for request in it:
                check(context, claims)
                yield request

        def responses(
            call_context: contextvars.Context, it: Iterator[Any], context: Any, claims: Any
        ) -> Iterator[Any]:
            while True:
                try:
                    response = call_context.run(next, it)
                except StopIteration:
                    return
                check(context, claims)
                yield response

        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            def unary_unary(request: Any, context: grpc.ServicerContext) -> Any:
                call_context, _ = start(context)
                return call_context.run(inner_uu, request, context)

            return _rebuild(handler, unary_unary=unary_unary)
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            def unary_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                call_context, claims = start(context)
                it = call_context.run(inner_us, request, context)
                yield from responses(call_context, it, context, claims)

            return _rebuild(handler, unary_stream=unary_stream)
        if handler.stream_unary is not None:
            inner_su = handler.stream_unary

            def stream_unary(request_iterator: Iterator[Any], context: Any) -> Any:
                call_context, claims = start(context)
                checked = requests(request_iterator, context, claims)
                return call_context.run(inner_su, checked, context)

            return _rebuild(handler, stream_unary=stream_unary)
        inner_ss = handler.stream_stream
        assert inner_ss is not None  # noqa: S101 -- grpc handlers have exactly one behaviour

        def stream_stream(request_iterator: Iterator[Any], context: Any) -> Iterator[Any]:
            call_context, claims = start(context)
            checked = requests(request_iterator, context, claims)
            it = call_context.run(inner_ss, checked, context)
            yield from responses(call_context, it, context, claims)

        return _rebuild(handler, stream_stream=stream_stream)


class AsyncAuthServerInterceptor(grpc.aio.ServerInterceptor):
    """For `grpc.aio.server(interceptors=[AsyncAuthServerInterceptor(AsyncAuthClient(a))])`.

    Verify is awaited on the server's loop; handlers must be coroutines or async generators.
    """

    def __init__(
        self,
        client: AsyncAuthClient | AsyncVerifyBatcher,
        policy: AuthPolicy | None = None,
        *,
        cache: VerifyCache | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._gate = _Gate(policy, cache, now)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler | None:
        handler: _Handler | None = await continuation(handler_call_details)
        if handler is None:
            return None
        rule = self._gate.policy.rule(handler_call_details.method)
        if rule.public:
            return handler
        token = bearer_token(handler_call_details.invocation_metadata)
        return self._wrap(handler, token, rule)

    async def _authenticate(
        self, token: str | None, rule: MethodRule, context: grpc.aio.ServicerContext[Any, Any]
    ) -> VerifiedClaims:
        refusal: Refusal | None = MISSING_TOKEN if token is None else None
        claims = None
        if token is not None:
            claims = self._gate.cached(token, rule)
            if claims is None:
                try:
                    claims = await self._client.verify(
                        token, audience=self._gate.policy.audience, required_scopes=rule.scopes
                    )
                    self._gate.remember(token, rule, claims)
                except AuthClientError as error:
                    refusal = refusal_for(error)
        if refusal is not None or claims is None:
            refusal = refusal or MISSING_TOKEN
            await context.abort(refusal.code, refusal.message, refusal.trailing_metadata())
        # Each asyncio call runs in its own task, with its own copy of the context.
        bind_claims(claims)
        return claims

    def _wrap(self, handler: _Handler, token: str | None, rule: MethodRule) -> _Handler:
        gate = self._gate
        authenticate = self._authenticate

        async def check(context: Any, claims: VerifiedClaims) -> None:
            if gate.expired(claims):
                refusal = EXPIRED_MID_STREAM
                await context.abort(refusal.code, refusal.message, refusal.trailing_metadata())

        async def requests(it: Any, context: Any, claims: VerifiedClaims) -> AsyncIterator[Any]:
            async for request in it:
                await check(context, claims)
                yield request

        async def responses(it: Any, context: Any, claims: VerifiedClaims) -> AsyncIterator[Any]:
            async for response in it:
                await check(context, claims)
                yield response

        kind, inner = _behaviour(handler)
        streams_in = kind.startswith("stream")
        if kind.endswith("_stream") and inspect.isasyncgenfunction(inner):

            async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
                claims = await authenticate(token, rule, context)
                arg = requests(request, context, claims) if streams_in else request
                async for response in responses(inner(arg, context), context, claims):
                    yield response

            return _rebuild(handler, **{kind: streaming})

        async def single(request: Any, context: Any) -> Any:
            claims = await authenticate(token, rule, context)
            arg = requests(request, context, claims) if streams_in else request
            return await inner(arg, context)

        return _rebuild(handler, **{kind: single})


def _behaviour(handler: _Handler) -> tuple[str, Callable[..., Any]]:
    for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
        behaviour = getattr(handler, kind)
        if behaviour is not None:
            return kind, behaviour
    raise ValueError("a method handler without a behaviour")
