"""Per-call work around every handler, applied once, when the handlers are registered.

grpc.aio server interceptors are resolved per call: for each RPC the server awaits every
interceptor's `intercept_service` coroutine to choose a handler before running it. Wrapping
each method's handler once, at registration, does the same work with no per-call handler
resolution. (An earlier bench run blamed ~125 µs per call on the interceptors; repeated
interleaved runs on a quiet machine show the interceptor machinery itself costs only a few
µs, and our per-call work ~20 µs: docs/performance.md. The layers stay: no slower, one
mechanism for unary and streaming handlers, no per-call allocation of handlers.)

`LayeredServer` is a grpc.aio server that stands in for the real one wherever handlers are
registered (the generated `add_*_to_server` functions, health, reflection): it wraps each
handler and registers the wrapped one on the real server. Everything else is delegated.

What wraps what, outermost first:

* unary-unary handlers (all of ours but reflection and the Watch streams): the
  `unary_layers` in the order given (today: observing for request id, metrics and audit
  context, then tracing when enabled), then the guard, then the handler;
* streaming handlers: the guard only.

The guard, in this order: a stopping server refuses the call (UNAVAILABLE / SHUTTING_DOWN,
transport/drain.py) and otherwise counts it until grpc reports it done; a request message
that does not parse is refused (INVALID_ARGUMENT / INVALID_REQUEST); oversize metadata is
refused (below).

Unparseable requests (issue 13, finding 3): grpc.aio calls the handler's
`request_deserializer` itself, before any handler code, and answers an exception there with
UNKNOWN, the exception's text as the status message and a logged traceback, per request.
So every handler is registered with a deserializer that never raises: on failure it returns
the `MALFORMED` marker, which the guard refuses (for a request stream: when the handler
reads that message; transport/malformed.py). The refusal carries no exception text, and the
log gets at most one line a minute with the count, so a cheap flood of bad bytes cannot flood
the log; metrics count every one under INVALID_REQUEST.

grpc's own `grpc.max_metadata_size` refuses oversize headers with a bare RESOURCE_EXHAUSTED;
the limit here refuses a smaller, configured size first with INVALID_ARGUMENT and the
METADATA_TOO_LARGE reason, so a client learns precisely what went wrong.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeAlias, cast

import grpc

from sidecar.calls import record_reason
from sidecar.errors import (
    AuthSidecarError,
    InvalidRequestError,
    MetadataTooLargeError,
    ShuttingDownError,
)
from sidecar.transport.drain import CallGate
from sidecar.transport.malformed import MALFORMED, malformed_log, tolerant
from sidecar.transport.ratelimit import RateLimitedLog
from sidecar.transport.status import to_status

__all__ = ["Behavior", "LayeredServer", "UnaryLayer", "metadata_limit", "metadata_size"]

Behavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
# (behaviour, full method name "/pkg.Service/Method") -> the behaviour wrapped.
UnaryLayer = Callable[[Behavior, str], Behavior]
# Generic only in the type stubs, so the alias is a string.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


def metadata_size(metadata: Any) -> int:
    """Bytes as HPACK accounts them: name + value + 32 per entry (RFC 7541 section 4.1)."""
    total = 0
    for key, value in metadata or ():
        total += len(key) + len(value) + 32
    return total


class LayeredServer(grpc.aio.Server):
    """A grpc.aio server whose registered handlers all come out wrapped in our layers.

    `gate` and `malformed` are shared by every server of the process (one drain, one log
    budget); each defaults to its own.
    """

    def __init__(
        self,
        server: grpc.aio.Server,
        *,
        max_metadata_bytes: int,
        unary_layers: Sequence[UnaryLayer] = (),
        gate: CallGate | None = None,
        malformed: RateLimitedLog | None = None,
    ) -> None:
        self._server = server
        self._max_metadata_bytes = max_metadata_bytes
        self._unary_layers = tuple(unary_layers)
        self.gate = gate or CallGate()
        self._malformed = malformed or malformed_log()

    # -- registration: the only part that is not plain delegation ---------------------------

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: Mapping[str, Handler]
    ) -> None:
        wrapped = {
            name: self.wrap(handler, f"/{service_name}/{name}")
            for name, handler in method_handlers.items()
        }
        self._server.add_registered_method_handlers(service_name, wrapped)

    def add_generic_rpc_handlers(
        self, generic_rpc_handlers: Iterable[grpc.GenericRpcHandler]
    ) -> None:
        self._server.add_generic_rpc_handlers(
            tuple(_WrappedGeneric(handler, self.wrap) for handler in generic_rpc_handlers)
        )

    def wrap(self, handler: Handler, method: str) -> Handler:
        """`handler` with the layers around its behaviour; same shape and serialiser, and a
        deserializer that returns `MALFORMED` instead of raising."""
        guard = _Guard(self.gate, self._malformed, self._max_metadata_bytes, method)
        if handler.request_streaming or handler.response_streaming:
            streaming = handler.stream_stream or handler.stream_unary or handler.unary_stream
            return _same_shape(handler, _guarded_stream(streaming, guard, handler))
        # grpc's stubs type behaviours for the sync server; ours are grpc.aio coroutines.
        unary: Behavior = _guarded(cast(Behavior, handler.unary_unary), guard)
        for layer in reversed(self._unary_layers):
            unary = layer(unary, method)
        return _same_shape(handler, unary)

    # -- delegation -------------------------------------------------------------------------

    def add_insecure_port(self, address: str) -> int:
        return self._server.add_insecure_port(address)

    def add_secure_port(self, address: str, server_credentials: grpc.ServerCredentials) -> int:
        return self._server.add_secure_port(address, server_credentials)

    async def start(self) -> None:
        await self._server.start()

    async def stop(self, grace: float | None) -> None:
        await self._server.stop(grace)

    async def wait_for_termination(self, timeout: float | None = None) -> bool:
        return await self._server.wait_for_termination(timeout)


class _WrappedGeneric(grpc.GenericRpcHandler):
    """A generic handler's answers, wrapped once per method.

    The generated code registers each service both ways and grpc prefers the registered
    handlers, so this path serves only what was registered generically alone. The inner
    handler returns the same object for a method on every call; only methods it knows reach
    the cache, which bounds it.
    """

    def __init__(self, inner: Any, wrap: Callable[[Handler, str], Handler]) -> None:
        self._inner = inner
        self._wrap = wrap
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Handler | None:
        handler: Handler | None = self._inner.service(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(handler, method)
        self._wrapped[method] = (handler, wrapped)
        return wrapped


async def _refuse(context: grpc.aio.ServicerContext[Any, Any], error: AuthSidecarError) -> None:
    status = to_status(error)
    record_reason(error.reason)  # so metrics, audit and traces label it like any refusal
    await context.abort(status.code, status.details, status.trailing_metadata)


def _malformed_error() -> InvalidRequestError:
    return InvalidRequestError("request message malformed")


class _Guard:
    """What every call of one method passes before its handler (module docstring)."""

    __slots__ = ("gate", "malformed", "max_metadata_bytes", "method")

    def __init__(
        self, gate: CallGate, malformed: RateLimitedLog, max_metadata_bytes: int, method: str
    ) -> None:
        self.gate = gate
        self.malformed = malformed
        self.max_metadata_bytes = max_metadata_bytes
        self.method = method

    async def admit(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Refuse the call (abort raises) or count it as running."""
        if self.gate.refusing:
            await _refuse(context, ShuttingDownError())
        if request is MALFORMED:
            self.malformed.note(self.method)
            await _refuse(context, _malformed_error())
        if metadata_size(context.invocation_metadata()) > self.max_metadata_bytes:
            await _refuse(context, MetadataTooLargeError())
        self.gate.admit(context)

    async def requests(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        """A request stream whose unparseable message refuses the call when it is read."""
        async for request in requests:
            if request is MALFORMED:
                self.malformed.note(self.method)
                await _refuse(context, _malformed_error())
            yield request


def metadata_limit(max_bytes: int) -> UnaryLayer:
    """The limit as a layer of its own (the benchmark's interceptor reference uses it)."""
    return lambda behavior, method: _limited(behavior, max_bytes)


def _limited(behavior: Behavior, max_bytes: int) -> Behavior:
    async def limited(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if metadata_size(context.invocation_metadata()) > max_bytes:
            await _refuse(context, MetadataTooLargeError())
        return await behavior(request, context)

    return limited


def _guarded(behavior: Behavior, guard: _Guard) -> Behavior:
    # `_Guard.admit` inlined: the unary path is the hot one, one coroutine frame fewer.
    gate, malformed, method = guard.gate, guard.malformed, guard.method
    max_bytes = guard.max_metadata_bytes

    async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if gate.refusing:
            await _refuse(context, ShuttingDownError())
        if request is MALFORMED:
            malformed.note(method)
            await _refuse(context, _malformed_error())
        if metadata_size(context.invocation_metadata()) > max_bytes:
            await _refuse(context, MetadataTooLargeError())
        gate.admit(context)
        return await behavior(request, context)

    return guarded


def _guarded_stream(behavior: Any, guard: _Guard, handler: Handler) -> Any:
    """The guard around a streaming behaviour, which grpc.aio accepts in two forms: an async
    generator function (reflection) or a coroutine writing with `context.write` (Health).

    A stream the gate ends (`CallGate.refuse`) is cancelled; the cancellation is caught here
    and answered UNAVAILABLE / SHUTTING_DOWN, so the caller learns why and can go elsewhere.
    A cancellation by the caller goes on as before, and so does ours when the handler has
    already sent its status (the Watch stream ends itself at shutdown too: transport/watch.py):
    grpc ends a cancelled call quietly.
    """
    gate = guard.gate
    streamed_requests = handler.request_streaming

    def requests(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return guard.requests(request, context) if streamed_requests else request

    async def shutting_down(task: asyncio.Task[Any], context: Any) -> None:
        task.uncancel()  # the cancellation was only the signal; the abort must still run
        await _refuse(context, ShuttingDownError())

    if inspect.isasyncgenfunction(behavior):

        async def guarded_generator(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            await guard.admit(request, context)
            with gate.stream() as task:
                try:
                    async for response in behavior(requests(request, context), context):
                        yield response
                except asyncio.CancelledError:
                    if task is None or not gate.ended(task) or context.done():
                        raise
                    await shutting_down(task, context)

        return guarded_generator
    if inspect.iscoroutinefunction(behavior):

        async def guarded_coroutine(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> Any:
            await guard.admit(request, context)
            with gate.stream() as task:
                try:
                    return await behavior(requests(request, context), context)
                except asyncio.CancelledError:
                    if task is None or not gate.ended(task) or context.done():
                        raise
                    await shutting_down(task, context)

        return guarded_coroutine
    # A sync behaviour would run on grpc's executor; none of ours is, and silently leaving
    # one unguarded would drop the limit.
    raise TypeError(f"{guard.method}: streaming handlers must be async to be wrapped")


def _same_shape(handler: Handler, behavior: Any) -> Handler:
    kwargs = {
        "request_deserializer": tolerant(handler.request_deserializer),
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(behavior, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(behavior, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(behavior, **kwargs)
    return grpc.unary_unary_rpc_method_handler(behavior, **kwargs)
