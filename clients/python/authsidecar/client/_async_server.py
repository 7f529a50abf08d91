"""`AsyncAuthServerInterceptor`: the server interceptor of `_server.py` for `grpc.aio`.

Verify is awaited on the server's loop; the decisions, the policy and the refusals are
`_gate.py`'s, shared with the sync interceptor. The watcher is a task on the server's loop,
started by the constructor when a loop runs, else by the first call.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any, Never

import grpc

from authsidecar.client._async_batcher import AsyncVerifyBatcher
from authsidecar.client._async_client import AsyncAuthClient
from authsidecar.client._closing import AsyncClosing
from authsidecar.client._context import bind_claims
from authsidecar.client._errors import AuthClientError
from authsidecar.client._gate import Handler, InterceptorBase, Miss, behaviour, rebuild
from authsidecar.client._models import VerifiedClaims
from authsidecar.client._policy import MethodRule
from authsidecar.client._refusal import EXPIRED_MID_STREAM, Refusal, bearer_token, refusal_for
from authsidecar.client._watch import AsyncWatcher

_Verifier = AsyncAuthClient | AsyncVerifyBatcher

# The owned batcher's misses go on a VerifyStream, and misses that waited behind a batch are
# held until 6 ms after it was sent (a lone miss never is): a stream message's round trip is
# short, so without the hold fewer misses gather per message and the CPU per call does not
# fall; with it, one-shot tokens at 16 in flight gather ~7-8 per message instead of ~4
# (docs/performance.md, "One-shot misses on a VerifyStream").
MISS_HOLD_S = 0.006


async def _abort(context: grpc.aio.ServicerContext[Any, Any], refusal: Refusal) -> Never:
    await context.abort(refusal.code, refusal.message, refusal.trailing_metadata())


def _refuser(refusal: Refusal) -> Callable[..., Any]:
    """A unary-unary behaviour that refuses its call (the handler itself never runs)."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Never:
        await _abort(context, refusal)

    return refuse


class AsyncAuthServerInterceptor(
    AsyncClosing, InterceptorBase[_Verifier], grpc.aio.ServerInterceptor
):
    """For `grpc.aio.server(interceptors=[AsyncAuthServerInterceptor(AsyncAuthClient(a))])`.

    Verify is awaited on the server's loop; handlers must be coroutines or async generators.
    """

    def _connect(self, client: _Verifier, coalesce_misses: bool) -> _Verifier:
        sidecar = client.client if isinstance(client, AsyncVerifyBatcher) else client
        self._owned_batcher: AsyncVerifyBatcher | None = None
        if isinstance(client, AsyncAuthClient) and coalesce_misses:
            self._owned_batcher = AsyncVerifyBatcher(
                client, max_in_flight=1, stream=True, hold_s=MISS_HOLD_S
            )
        self._watcher: AsyncWatcher | None = None
        self._watch_unstarted = False  # a plain flag: read by every call
        if self._gate.state is not None:
            self._watcher = AsyncWatcher(self._gate.state, sidecar._watch)
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                self._watch_unstarted = True  # started by the first call, on the server's loop
            else:
                self._watcher.start()
        return self._owned_batcher or client

    async def aclose(self) -> None:
        """Stop the watcher and send the misses still waiting; the client stays open."""
        if self._watcher is not None:
            await self._watcher.aclose()
        if self._owned_batcher is not None:
            await self._owned_batcher.close()

    _aclose = aclose

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        if self._watch_unstarted:
            self._watch_unstarted = False
            if self._watcher is not None:
                self._watcher.start()
        handler: Handler | None = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return self._protect(handler, handler_call_details)
        # Unary-unary: no message stream to re-check, so the call is decided here, in the
        # task that then runs the handler (grpc.aio runs both in one task, so the bound
        # claims reach it), and the handler is passed on as it is. Wrapping it in a per-call
        # coroutine instead costs every call about as much again as grpc.aio's interceptor
        # path itself (bench/callee.py, rows d1 and d2). A hit is decided without leaving
        # this coroutine: no other coroutine, task or future (docs/performance.md, "What a
        # cache hit costs").
        rule = self._gate.rule(handler_call_details.method)
        if rule.public:
            return handler
        step = self._gate.start(bearer_token(handler_call_details.invocation_metadata), rule)
        if isinstance(step, Miss):
            step = await self._verify(step)
        if isinstance(step, Refusal):
            return rebuild(handler, unary_unary=_refuser(step))
        bind_claims(step)
        return handler

    async def _verify(self, miss: Miss) -> VerifiedClaims | Refusal:
        """Verify's answer (kept by the cache if nothing voided it meanwhile), or the refusal."""
        try:
            claims = await self._client.verify(
                miss.token, audience=miss.audience, required_scopes=miss.scopes
            )
        except AuthClientError as error:
            return refusal_for(error)
        return self._gate.finish(miss, claims)

    async def _decide(self, token: str | None, rule: MethodRule) -> VerifiedClaims | Refusal:
        """The claims, or the refusal: from the decision cache, or Verify's answer."""
        step = self._gate.start(token, rule)
        return await self._verify(step) if isinstance(step, Miss) else step

    async def _authenticate(
        self, token: str | None, rule: MethodRule, context: grpc.aio.ServicerContext[Any, Any]
    ) -> VerifiedClaims:
        step = await self._decide(token, rule)
        if isinstance(step, Refusal):
            await _abort(context, step)
        # Each asyncio call runs in its own task, with its own copy of the context.
        bind_claims(step)
        return step

    def _wrap(self, handler: Handler, token: str | None, rule: MethodRule) -> Handler:
        gate = self._gate
        authenticate = self._authenticate

        async def check(context: Any, claims: VerifiedClaims) -> None:
            if gate.expired(claims):
                await _abort(context, EXPIRED_MID_STREAM)

        async def requests(it: Any, context: Any, claims: VerifiedClaims) -> AsyncIterator[Any]:
            async for request in it:
                await check(context, claims)
                yield request

        async def responses(it: Any, context: Any, claims: VerifiedClaims) -> AsyncIterator[Any]:
            async for response in it:
                await check(context, claims)
                yield response

        kind, inner = behaviour(handler)
        streams_in = kind.startswith("stream")
        if kind.endswith("_stream") and inspect.isasyncgenfunction(inner):

            async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
                claims = await authenticate(token, rule, context)
                arg = requests(request, context, claims) if streams_in else request
                async for response in responses(inner(arg, context), context, claims):
                    yield response

            return rebuild(handler, **{kind: streaming})

        async def single(request: Any, context: Any) -> Any:
            claims = await authenticate(token, rule, context)
            arg = requests(request, context, claims) if streams_in else request
            return await inner(arg, context)

        return rebuild(handler, **{kind: single})
