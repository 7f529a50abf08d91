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
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeAlias

import grpc

from authsidecar.client._decisions import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_ENTRIES,
    DecisionCache,
    Key,
    decision_key,
)
from authsidecar.client._refusal import (
    EXPIRED_MID_STREAM,
    MISSING_TOKEN,
    Refusal,
    bearer_token,
    refusal_for,
)
from authsidecar.client._watch import AsyncWatcher, ThreadWatcher
from authsidecar.client._watch_state import DecisionStats, Position, WatchState
from authsidecar.client.aio import AsyncAuthClient
from authsidecar.client.batching import AsyncVerifyBatcher, VerifyBatcher
from authsidecar.client.client import AuthClient
from authsidecar.client.context import bind_claims
from authsidecar.client.errors import AuthClientError
from authsidecar.client.models import VerifiedClaims
from authsidecar.client.policy import AuthPolicy, MethodRule

_Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


def _rebuild(handler: _Handler, **behaviours: Any) -> _Handler:
    """`handler` with its behaviour replaced, serializers kept."""
    return handler._replace(**behaviours)  # type: ignore[attr-defined, no-any-return]


@dataclass(frozen=True, slots=True)
class _Lookup:
    """One call's visit to the cache: the hit, or what is needed to keep Verify's answer."""

    claims: VerifiedClaims | None = None
    key: Key | None = None
    position: Position | None = None


class _Gate:
    """What both interceptors share: the policy, the decisions, the expiry clock."""

    def __init__(
        self,
        policy: AuthPolicy | None,
        now: Callable[[], float],
        cache_decisions: bool,
        max_entries: int,
        max_bytes: int,
        staleness_s: float | None,
    ) -> None:
        self.policy = policy or AuthPolicy()
        self.now = now
        self.state: WatchState | None = None
        if cache_decisions:
            cache = DecisionCache(max_entries=max_entries, max_bytes=max_bytes)
            self.state = WatchState(cache, staleness_s=staleness_s)

    def lookup(self, token: str, rule: MethodRule) -> _Lookup:
        if self.state is None:
            return _Lookup()
        key = decision_key(token, self.policy.audience, rule.scopes)
        claims, position = self.state.consult(key, self.now())
        return _Lookup(claims, key, position)

    def remember(self, lookup: _Lookup, token: str, claims: VerifiedClaims) -> None:
        if self.state is not None and lookup.key is not None:
            self.state.admit(lookup.position, lookup.key, claims, len(token), self.now())

    def stats(self) -> DecisionStats:
        return DecisionStats() if self.state is None else self.state.stats()

    def expired(self, claims: VerifiedClaims) -> bool:
        if not self.policy.check_expiry_per_message:
            return False
        return self.now() >= claims.exp + self.policy.expiry_leeway_s


_OPTIONS_DOC = """
        Args:
            client: the sidecar client (or a batcher around one) that Verify and Watch use;
                never closed by the interceptor.
            policy: which methods need which scopes (default: every method, no scope).
            cache_decisions: keep the sidecar's decisions while the Watch stream is current
                (default True). False: every call is verified, no watcher runs.
            coalesce_misses: send the calls that miss at the same moment as one VerifyBatch
                (default True); ignored when `client` is already a batcher.
            max_entries / max_bytes: bounds of the decision cache (least recently used out).
            staleness_s: no hit is served when the stream was silent this long (default 3x
                the heartbeat interval the sidecar announces).
            now: the epoch clock that `exp`/`nbf` are compared with.
"""


class AuthServerInterceptor(grpc.ServerInterceptor):
    """For `grpc.server(..., interceptors=[AuthServerInterceptor(AuthClient(addr), policy)])`.

    Runs a watcher thread while decisions are cached: `close()` it (or `with` it) when the
    server stops, before closing the client.
    """

    def __init__(
        self,
        client: AuthClient | VerifyBatcher,
        policy: AuthPolicy | None = None,
        *,
        cache_decisions: bool = True,
        coalesce_misses: bool = True,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        staleness_s: float | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._gate = _Gate(policy, now, cache_decisions, max_entries, max_bytes, staleness_s)
        sidecar = client.client if isinstance(client, VerifyBatcher) else client
        self._owned_batcher: VerifyBatcher | None = None
        if isinstance(client, AuthClient) and coalesce_misses:
            self._owned_batcher = VerifyBatcher(client, max_in_flight=1)
        self._client: AuthClient | VerifyBatcher = self._owned_batcher or client
        self._watcher: ThreadWatcher | None = None
        if self._gate.state is not None:
            self._watcher = ThreadWatcher(self._gate.state, sidecar._watch)
            self._watcher.start()

    __init__.__doc__ = _OPTIONS_DOC

    def stats(self) -> DecisionStats:
        """Counters of the decision cache and its stream (all zero when not caching)."""
        return self._gate.stats()

    def close(self) -> None:
        """Stop the watcher and send the misses still waiting; the client stays open."""
        if self._watcher is not None:
            self._watcher.close()
        if self._owned_batcher is not None:
            self._owned_batcher.close()

    def __enter__(self) -> AuthServerInterceptor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

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
        lookup = self._gate.lookup(token, rule)
        if lookup.claims is not None:
            return lookup.claims
        try:
            claims = self._client.verify(
                token, audience=self._gate.policy.audience, required_scopes=rule.scopes
            )
        except AuthClientError as error:
            context.abort_with_status(refusal_for(error).status())
        self._gate.remember(lookup, token, claims)
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
        cache_decisions: bool = True,
        coalesce_misses: bool = True,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        staleness_s: float | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._gate = _Gate(policy, now, cache_decisions, max_entries, max_bytes, staleness_s)
        sidecar = client.client if isinstance(client, AsyncVerifyBatcher) else client
        self._owned_batcher: AsyncVerifyBatcher | None = None
        if isinstance(client, AsyncAuthClient) and coalesce_misses:
            self._owned_batcher = AsyncVerifyBatcher(client, max_in_flight=1)
        self._client: AsyncAuthClient | AsyncVerifyBatcher = self._owned_batcher or client
        self._watcher: AsyncWatcher | None = None
        if self._gate.state is not None:
            self._watcher = AsyncWatcher(self._gate.state, sidecar._watch)
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                pass  # started by the first call, on the server's loop
            else:
                self._watcher.start()

    __init__.__doc__ = _OPTIONS_DOC

    def stats(self) -> DecisionStats:
        """Counters of the decision cache and its stream (all zero when not caching)."""
        return self._gate.stats()

    async def aclose(self) -> None:
        """Stop the watcher and send the misses still waiting; the client stays open."""
        if self._watcher is not None:
            await self._watcher.aclose()
        if self._owned_batcher is not None:
            await self._owned_batcher.close()

    async def __aenter__(self) -> AsyncAuthServerInterceptor:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler | None:
        if self._watcher is not None and not self._watcher.started:
            self._watcher.start()
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
            lookup = self._gate.lookup(token, rule)
            claims = lookup.claims
            if claims is None:
                try:
                    claims = await self._client.verify(
                        token, audience=self._gate.policy.audience, required_scopes=rule.scopes
                    )
                    self._gate.remember(lookup, token, claims)
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
