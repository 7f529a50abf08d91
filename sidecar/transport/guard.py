"""The guard: what every call passes before its handler, whatever layers wrap it.

In this order: a stopping server refuses the call (UNAVAILABLE / SHUTTING_DOWN,
transport/drain.py) and otherwise counts it until grpc reports it done; a request message
that does not parse is refused (INVALID_ARGUMENT / INVALID_REQUEST); oversize metadata is
refused (below). transport/layers.py puts it around every registered handler.

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
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc

from sidecar.calls import record_reason
from sidecar.errors import (
    AuthSidecarError,
    InvalidRequestError,
    MetadataTooLargeError,
    ShuttingDownError,
)
from sidecar.transport.drain import CallGate
from sidecar.transport.malformed import MALFORMED
from sidecar.transport.ratelimit import RateLimitedLog
from sidecar.transport.status import to_status

__all__ = ["Behavior", "Guard", "guarded", "guarded_stream", "metadata_size", "refuse"]

# What a unary handler does with one call (a grpc.aio behaviour).
Behavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
# Generic only in the type stubs, so the alias is a string.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


def metadata_size(metadata: Any) -> int:
    """Bytes as HPACK accounts them: name + value + 32 per entry (RFC 7541 section 4.1)."""
    total = 0
    for key, value in metadata or ():
        total += len(key) + len(value) + 32
    return total


async def refuse(context: grpc.aio.ServicerContext[Any, Any], error: AuthSidecarError) -> None:
    status = to_status(error)
    record_reason(error.reason)  # so metrics, audit and traces label it like any refusal
    await context.abort(status.code, status.details, status.trailing_metadata)


def _malformed_error() -> InvalidRequestError:
    return InvalidRequestError("request message malformed")


class Guard:
    """What every call of one method passes before its handler (the module docstring)."""

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
            await refuse(context, ShuttingDownError())
        if request is MALFORMED:
            self.malformed.note(self.method)
            await refuse(context, _malformed_error())
        if metadata_size(context.invocation_metadata()) > self.max_metadata_bytes:
            await refuse(context, MetadataTooLargeError())
        self.gate.admit(context)

    async def requests(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        """A request stream whose unparseable message refuses the call when it is read."""
        async for request in requests:
            if request is MALFORMED:
                self.malformed.note(self.method)
                await refuse(context, _malformed_error())
            yield request


def guarded(behavior: Behavior, guard: Guard) -> Behavior:
    # `Guard.admit` inlined: the unary path is the hot one, one coroutine frame fewer.
    gate, malformed, method = guard.gate, guard.malformed, guard.method
    max_bytes = guard.max_metadata_bytes

    async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if gate.refusing:
            await refuse(context, ShuttingDownError())
        if request is MALFORMED:
            malformed.note(method)
            await refuse(context, _malformed_error())
        if metadata_size(context.invocation_metadata()) > max_bytes:
            await refuse(context, MetadataTooLargeError())
        gate.admit(context)
        return await behavior(request, context)

    return guarded


def guarded_stream(behavior: Any, guard: Guard, handler: Handler) -> Any:
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
        await refuse(context, ShuttingDownError())

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
