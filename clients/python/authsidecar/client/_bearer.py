"""Client interceptors: every outgoing call carries `authorization: Bearer <token>`.

Unary-request calls (unary-unary) refused with UNAUTHENTICATED are retried ONCE: the
interceptor tells the source the token was refused (`invalidate`), takes a fresh one and
sends the same request again, the httpx auth-flow pattern (send, 401, renew, resend). A
second UNAUTHENTICATED is returned to the caller as is. The retry reuses the call's relative
timeout, so a retried call may take up to twice its timeout.

Streaming calls (unary-stream, stream-unary, stream-stream) are NOT retried: a request
iterator cannot be replayed, and a response stream may already have delivered messages.
They do get a fresh token when they start, and when one ends UNAUTHENTICATED the token is
invalidated, so the caller's next call renews.

Attach these interceptors to the channel of the *service* you call (not to the sidecar
channel): `grpc.intercept_channel(channel, BearerClientInterceptor(source))` or
`grpc.aio.insecure_channel(target, interceptors=async_bearer_interceptors(source))`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import grpc

from authsidecar.client._credentials import AUTHORIZATION, AsyncTokenSource, TokenSource

_UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


def _bearer_metadata(metadata: Sequence[tuple[str, Any]] | None, token: str) -> list[Any]:
    kept = [(key, value) for key, value in (metadata or ()) if key != AUTHORIZATION]
    return [*kept, (AUTHORIZATION, f"Bearer {token}")]


class _Details(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


class _CallDetails(_Details, grpc.ClientCallDetails):
    """grpc.ClientCallDetails is abstract; this is the usual concrete stand-in."""


def _with_token(details: grpc.ClientCallDetails, token: str) -> grpc.ClientCallDetails:
    return _CallDetails(
        details.method,
        details.timeout,
        _bearer_metadata(details.metadata, token),
        details.credentials,
        getattr(details, "wait_for_ready", None),
        getattr(details, "compression", None),
    )


class BearerClientInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Sync channels: `grpc.intercept_channel(channel, BearerClientInterceptor(source))`."""

    def __init__(self, source: TokenSource, *, retry_unauthenticated: bool = True) -> None:
        self._source = source
        self._retry = retry_unauthenticated

    def _on_done(self, token: str) -> Callable[[Any], None]:
        def invalidate_if_refused(call: Any) -> None:
            if call.code() == _UNAUTHENTICATED:
                self._source.invalidate(token)

        return invalidate_if_refused

    def intercept_unary_unary(
        self, continuation: Callable[[Any, Any], Any], client_call_details: Any, request: Any
    ) -> Any:
        token = self._source.token()
        call = continuation(_with_token(client_call_details, token), request)
        # code() waits for the outcome; a unary call is complete by then anyway.
        if self._retry and call.code() == _UNAUTHENTICATED:
            self._source.invalidate(token)
            fresh = self._source.token()
            call = continuation(_with_token(client_call_details, fresh), request)
        return call

    def _stream(self, continuation: Callable[[Any, Any], Any], details: Any, arg: Any) -> Any:
        token = self._source.token()
        call = continuation(_with_token(details, token), arg)
        call.add_done_callback(self._on_done(token))
        return call

    def intercept_unary_stream(
        self, continuation: Callable[[Any, Any], Any], client_call_details: Any, request: Any
    ) -> Any:
        return self._stream(continuation, client_call_details, request)

    def intercept_stream_unary(
        self,
        continuation: Callable[[Any, Any], Any],
        client_call_details: Any,
        request_iterator: Any,
    ) -> Any:
        return self._stream(continuation, client_call_details, request_iterator)

    intercept_stream_stream = intercept_stream_unary


async def _token_of(source: TokenSource | AsyncTokenSource) -> str:
    token = source.token()
    return token if isinstance(token, str) else await token


def _aio_with_token(details: grpc.aio.ClientCallDetails, token: str) -> grpc.aio.ClientCallDetails:
    metadata = grpc.aio.Metadata(*_bearer_metadata(list(details.metadata or ()), token))
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


class _AsyncBearer:
    """The asyncio logic, shared by the four per-kind interceptors below."""

    def __init__(self, source: TokenSource | AsyncTokenSource, retry: bool) -> None:
        self.source = source
        self.retry = retry
        self._pending: set[asyncio.Task[None]] = set()

    async def unary(self, continuation: Callable[[Any, Any], Any], details: Any, arg: Any) -> Any:
        token = await _token_of(self.source)
        call = await continuation(_aio_with_token(details, token), arg)
        if self.retry and await call.code() == _UNAUTHENTICATED:
            self.source.invalidate(token)
            fresh = await _token_of(self.source)
            call = await continuation(_aio_with_token(details, fresh), arg)
        return call

    async def stream(self, continuation: Callable[[Any, Any], Any], details: Any, arg: Any) -> Any:
        token = await _token_of(self.source)
        call = await continuation(_aio_with_token(details, token), arg)
        call.add_done_callback(self._on_done(token))
        return call

    def _on_done(self, token: str) -> Callable[[Any], None]:
        async def check(call: Any) -> None:
            if await call.code() == _UNAUTHENTICATED:
                self.source.invalidate(token)

        def schedule(call: Any) -> None:
            # aio's code() is a coroutine: look at it from a task (the call is already done).
            task = asyncio.get_running_loop().create_task(check(call))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

        return schedule


class _PerKind:
    """One of the four asyncio interceptors: each files one of these under its kind's name."""

    def __init__(self, core: _AsyncBearer) -> None:
        self._core = core

    async def _unary(
        self, continuation: Callable[[Any, Any], Any], client_call_details: Any, request: Any
    ) -> Any:
        return await self._core.unary(continuation, client_call_details, request)

    async def _unary_stream(
        self, continuation: Callable[[Any, Any], Any], client_call_details: Any, request: Any
    ) -> Any:
        return await self._core.stream(continuation, client_call_details, request)

    async def _stream(
        self,
        continuation: Callable[[Any, Any], Any],
        client_call_details: Any,
        request_iterator: Any,
    ) -> Any:
        return await self._core.stream(continuation, client_call_details, request_iterator)


class _AsyncUnaryUnary(_PerKind, grpc.aio.UnaryUnaryClientInterceptor):
    intercept_unary_unary = _PerKind._unary


class _AsyncUnaryStream(_PerKind, grpc.aio.UnaryStreamClientInterceptor):
    intercept_unary_stream = _PerKind._unary_stream


class _AsyncStreamUnary(_PerKind, grpc.aio.StreamUnaryClientInterceptor):
    intercept_stream_unary = _PerKind._stream


class _AsyncStreamStream(_PerKind, grpc.aio.StreamStreamClientInterceptor):
    intercept_stream_stream = _PerKind._stream


def async_bearer_interceptors(
    source: TokenSource | AsyncTokenSource, *, retry_unauthenticated: bool = True
) -> list[grpc.aio.ClientInterceptor]:
    """The interceptors for `grpc.aio.insecure_channel(t, interceptors=...)`.

    Four objects, one per RPC kind, because grpc.aio files an interceptor under the first
    kind it implements only. Takes an `AsyncTokenSource` (renewal awaits, never blocks the
    loop) or a sync `TokenSource` whose `token()` does not block (`StaticTokenSource`).
    """
    core = _AsyncBearer(source, retry_unauthenticated)
    return [
        _AsyncUnaryUnary(core),
        _AsyncUnaryStream(core),
        _AsyncStreamUnary(core),
        _AsyncStreamStream(core),
    ]
