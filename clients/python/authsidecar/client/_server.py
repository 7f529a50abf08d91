"""Server interceptors: every incoming call is verified at the sidecar before its handler runs.

For each call that the `AuthPolicy` does not make public: read `authorization: Bearer <token>`,
ask the sidecar's Verify (with the policy's audience and the method's required scopes), then
run the handler with the claims bound for `current_claims()`. Refusals carry the sidecar's
reason in ErrorInfo (domain `authsidecar.v1`): UNAUTHENTICATED for a missing or bad token,
PERMISSION_DENIED for a missing scope, UNAVAILABLE when the sidecar cannot be reached.

Decisions are cached by default (issue 15): the sidecar's answer for a token and the same
requirements is kept, and a repeat call skips the hop, while the interceptor's Watch stream
is current; every event that voids a decision drops it, an entry never outlives the token's
`exp` nor precedes its `nbf`, and when the stream is down or late the interceptor verifies
every call (`_watch_state.py` says exactly when a hit is served and when an answer is kept).
Misses are coalesced by default: calls that miss at the same moment share one VerifyBatch,
and a lone miss is sent at once. `cache_decisions=False` and `coalesce_misses=False` give
the plain Verify-per-call interceptor. The interceptor owns a watcher (a daemon thread, or an
asyncio task): `close()` / `aclose()` it, or use it as a context manager; it never closes the
client. `stats()` reports hits, misses, invalidations and staleness (`DecisionStats`).

The check runs inside the wrapped handler, not in `intercept_service`: in the sync server that
is the worker thread (grpc calls `intercept_service` on its single dispatch thread, which a
Verify would stall for every call), and in asyncio it is an `await`, never a blocking call.

Streams are checked once, when they start, like HTTP/2 requests; a token that expires later
does not end them unless `AuthPolicy.check_expiry_per_message` is set, which refuses the
stream (UNAUTHENTICATED / TOKEN_EXPIRED) at the first message received or yielded after `exp`.
The per-message check reads only the verified `exp`, never the sidecar; asyncio handlers that
write with `context.write()` instead of yielding are checked on received messages only.

`AuthServerInterceptor` (this module) and `AsyncAuthServerInterceptor` (`_async_server.py`)
share everything but how they wait and abort: `_gate.py`.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from authsidecar.client._batcher import VerifyBatcher
from authsidecar.client._client import AuthClient
from authsidecar.client._closing import Closing
from authsidecar.client._context import bind_claims
from authsidecar.client._errors import AuthClientError
from authsidecar.client._gate import Handler, InterceptorBase, Miss, behaviour, rebuild
from authsidecar.client._models import VerifiedClaims
from authsidecar.client._policy import MethodRule
from authsidecar.client._refusal import EXPIRED_MID_STREAM, Refusal, refusal_for
from authsidecar.client._watch import ThreadWatcher


class AuthServerInterceptor(
    Closing, InterceptorBase[AuthClient | VerifyBatcher], grpc.ServerInterceptor
):
    """For `grpc.server(..., interceptors=[AuthServerInterceptor(AuthClient(addr), policy)])`.

    Runs a watcher thread while decisions are cached: `close()` it (or `with` it) when the
    server stops, before closing the client.
    """

    def _connect(
        self, client: AuthClient | VerifyBatcher, coalesce_misses: bool
    ) -> AuthClient | VerifyBatcher:
        sidecar = client.client if isinstance(client, VerifyBatcher) else client
        self._owned_batcher: VerifyBatcher | None = None
        if isinstance(client, AuthClient) and coalesce_misses:
            self._owned_batcher = VerifyBatcher(client, max_in_flight=1)
        self._watcher: ThreadWatcher | None = None
        if self._gate.state is not None:
            self._watcher = ThreadWatcher(self._gate.state, sidecar._watch)
            self._watcher.start()
        return self._owned_batcher or client

    def close(self) -> None:
        """Stop the watcher and send the misses still waiting; the client stays open."""
        if self._watcher is not None:
            self._watcher.close()
        if self._owned_batcher is not None:
            self._owned_batcher.close()

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Handler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        return self._protect(continuation(handler_call_details), handler_call_details)

    def _authenticate(
        self, token: str | None, rule: MethodRule, context: grpc.ServicerContext
    ) -> VerifiedClaims:
        step = self._gate.start(token, rule)
        if isinstance(step, Miss):
            try:
                claims = self._client.verify(
                    step.token, audience=step.audience, required_scopes=step.scopes
                )
            except AuthClientError as error:
                step = refusal_for(error)
            else:
                step = self._gate.finish(step, claims)
        if isinstance(step, Refusal):
            context.abort_with_status(step.status())
        return step

    def _start(
        self, token: str | None, rule: MethodRule, context: grpc.ServicerContext
    ) -> tuple[contextvars.Context, VerifiedClaims]:
        claims = self._authenticate(token, rule, context)
        # A fresh context per call: pooled worker threads never see another call's claims.
        call_context = contextvars.copy_context()
        call_context.run(bind_claims, claims)
        return call_context, claims

    def _check(self, context: grpc.ServicerContext, claims: VerifiedClaims) -> None:
        if self._gate.expired(claims):
            context.abort_with_status(EXPIRED_MID_STREAM.status())

    def _requests(self, it: Iterator[Any], context: Any, claims: VerifiedClaims) -> Iterator[Any]:
        for request in it:
            self._check(context, claims)
            yield request

    def _responses(
        self, call_context: contextvars.Context, it: Iterator[Any], context: Any, claims: Any
    ) -> Iterator[Any]:
        while True:
            try:
                response = call_context.run(next, it)
            except StopIteration:
                return
            self._check(context, claims)
            yield response

    def _wrap(self, handler: Handler, token: str | None, rule: MethodRule) -> Handler:
        # Called for every call: only the behaviour itself is made per call.
        start, requests, responses = self._start, self._requests, self._responses
        kind, inner = behaviour(handler)
        streams_in = kind.startswith("stream")
        if kind.endswith("_stream"):

            def streaming(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                call_context, claims = start(token, rule, context)
                arg = requests(request, context, claims) if streams_in else request
                it = call_context.run(inner, arg, context)
                yield from responses(call_context, it, context, claims)

            return rebuild(handler, **{kind: streaming})

        def single(request: Any, context: grpc.ServicerContext) -> Any:
            call_context, claims = start(token, rule, context)
            arg = requests(request, context, claims) if streams_in else request
            return call_context.run(inner, arg, context)

        return rebuild(handler, **{kind: single})
