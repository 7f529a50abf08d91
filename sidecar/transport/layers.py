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

* unary-unary handlers (all of ours but reflection and Health/Watch): the `unary_layers`
  in the order given (today: observing for request id, metrics and audit context, then
  tracing when enabled), then the request-metadata size limit, then the handler;
* streaming handlers: the metadata limit only.

grpc's own `grpc.max_metadata_size` refuses oversize headers with a bare RESOURCE_EXHAUSTED;
the limit here refuses a smaller, configured size first with INVALID_ARGUMENT and the
METADATA_TOO_LARGE reason, so a client learns precisely what went wrong.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeAlias, cast

import grpc

from sidecar.calls import record_reason
from sidecar.errors import MetadataTooLargeError
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
    """A grpc.aio server whose registered handlers all come out wrapped in our layers."""

    def __init__(
        self,
        server: grpc.aio.Server,
        *,
        max_metadata_bytes: int,
        unary_layers: Sequence[UnaryLayer] = (),
    ) -> None:
        self._server = server
        self._max_metadata_bytes = max_metadata_bytes
        self._unary_layers = tuple(unary_layers)

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
        """`handler` with the layers around its behaviour; same shape and (de)serialisers."""
        limit = self._max_metadata_bytes
        if handler.request_streaming or handler.response_streaming:
            streaming = handler.stream_stream or handler.stream_unary or handler.unary_stream
            return _same_shape(handler, _limited_stream(streaming, limit, method))
        # grpc's stubs type behaviours for the sync server; ours are grpc.aio coroutines.
        unary: Behavior = _limited(cast(Behavior, handler.unary_unary), limit)
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


async def _refuse(context: grpc.aio.ServicerContext[Any, Any]) -> None:
    error = MetadataTooLargeError()
    status = to_status(error)
    record_reason(error.reason)  # so metrics, audit and traces label it like any refusal
    await context.abort(status.code, status.details, status.trailing_metadata)


def metadata_limit(max_bytes: int) -> UnaryLayer:
    """The limit as a layer of its own (the benchmark's interceptor reference uses it)."""
    return lambda behavior, method: _limited(behavior, max_bytes)


def _limited(behavior: Behavior, max_bytes: int) -> Behavior:
    async def limited(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if metadata_size(context.invocation_metadata()) > max_bytes:
            await _refuse(context)
        return await behavior(request, context)

    return limited


def _limited_stream(behavior: Any, max_bytes: int, method: str) -> Any:
    """The limit around a streaming behaviour, which grpc.aio accepts in two forms: an async
    generator function (reflection) or a coroutine writing with `context.write` (Health)."""
    if inspect.isasyncgenfunction(behavior):

        async def limited_generator(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            if metadata_size(context.invocation_metadata()) > max_bytes:
                await _refuse(context)
            async for response in behavior(request, context):
                yield response

        return limited_generator
    if inspect.iscoroutinefunction(behavior):
        return _limited(behavior, max_bytes)
    # A sync behaviour would run on grpc's executor; none of ours is, and silently leaving
    # one unguarded would drop the limit.
    raise TypeError(f"{method}: streaming handlers must be async to be wrapped")


def _same_shape(handler: Handler, behavior: Any) -> Handler:
    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(behavior, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(behavior, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(behavior, **kwargs)
    return grpc.unary_unary_rpc_method_handler(behavior, **kwargs)
