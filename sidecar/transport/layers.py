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

The guard (transport/guard.py) refuses a stopping server's calls, unparseable requests and
oversize metadata, and counts the calls it admits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

import grpc

from sidecar.errors import MetadataTooLargeError
from sidecar.transport.drain import CallGate
from sidecar.transport.guard import (
    Behavior,
    Guard,
    Handler,
    guarded,
    guarded_stream,
    metadata_size,
    refuse,
)
from sidecar.transport.malformed import malformed_log, tolerant
from sidecar.transport.ratelimit import RateLimitedLog

__all__ = ["Behavior", "LayeredServer", "UnaryLayer", "metadata_limit"]

# (behaviour, full method name "/pkg.Service/Method") -> the behaviour wrapped.
UnaryLayer = Callable[[Behavior, str], Behavior]


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
        guard = Guard(self.gate, self._malformed, self._max_metadata_bytes, method)
        if handler.request_streaming or handler.response_streaming:
            streaming = handler.stream_stream or handler.stream_unary or handler.unary_stream
            return _same_shape(handler, guarded_stream(streaming, guard, handler))
        # grpc's stubs type behaviours for the sync server; ours are grpc.aio coroutines.
        unary: Behavior = guarded(cast(Behavior, handler.unary_unary), guard)
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


def metadata_limit(max_bytes: int) -> UnaryLayer:
    """The limit as a layer of its own (the benchmark's interceptor reference uses it)."""
    return lambda behavior, method: _limited(behavior, max_bytes)


def _limited(behavior: Behavior, max_bytes: int) -> Behavior:
    async def limited(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if metadata_size(context.invocation_metadata()) > max_bytes:
            await refuse(context, MetadataTooLargeError())
        return await behavior(request, context)

    return limited


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
