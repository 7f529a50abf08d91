"""Checks that run before any handler: today, the request-metadata size cap.

grpc's own `grpc.max_metadata_size` refuses oversize headers with a bare RESOURCE_EXHAUSTED;
this interceptor refuses a smaller, configured size first with INVALID_ARGUMENT and the
METADATA_TOO_LARGE reason, so a client learns precisely what went wrong.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from sidecar.calls import record_reason
from sidecar.errors import MetadataTooLargeError
from sidecar.transport.status import to_status

_Continuation = Callable[
    [grpc.HandlerCallDetails], Awaitable["grpc.RpcMethodHandler[Any, Any] | None"]
]


def metadata_size(metadata: Any) -> int:
    """Bytes as HPACK accounts them: name + value + 32 per entry (RFC 7541 section 4.1)."""
    total = 0
    for key, value in metadata or ():
        total += len(key) + len(value) + 32
    return total


class MetadataLimitInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes

    async def intercept_service(
        self, continuation: _Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        if metadata_size(handler_call_details.invocation_metadata) <= self._max_bytes:
            return handler
        return _refusing(handler, MetadataTooLargeError())


def _refusing(
    handler: grpc.RpcMethodHandler[Any, Any], error: MetadataTooLargeError
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same shape as `handler` that aborts with `error`'s status."""
    status = to_status(error)

    async def abort(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        record_reason(error.reason)  # so metrics, audit and traces label it like any refusal
        await context.abort(status.code, status.details, status.trailing_metadata)

    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort, **kwargs)
    return grpc.unary_unary_rpc_method_handler(abort, **kwargs)


_MAX_WRAPPED = 256


class UnaryWrappingInterceptor(grpc.aio.ServerInterceptor):
    """Wraps each unary-unary handler's behaviour once per method (`_wrap`); streaming
    handlers (Health/Watch, reflection) pass through untouched.

    The registered handler is the same object on every call, so the wrapped one is cached;
    a refusing handler from an inner interceptor is new each time and is wrapped afresh.
    """

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler[Any, Any], Any]] = {}

    def _wrap(self, behavior: Any, method: str) -> Any:
        raise NotImplementedError

    async def intercept_service(
        self, continuation: _Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming or handler.response_streaming:
            return handler
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]  # type: ignore[no-any-return]
        wrapped = grpc.unary_unary_rpc_method_handler(
            self._wrap(handler.unary_unary, method),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        if len(self._wrapped) < _MAX_WRAPPED:
            self._wrapped[method] = (handler, wrapped)
        return wrapped
