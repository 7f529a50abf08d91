"""The outermost call layer: every call's `CallInfo` (request id, peer, the reason and
outcome handlers record), and its count and latency when metrics are on.

Apart from transport/metrics.py so a sidecar without `metrics.listen` (the default) never
imports prometheus_client (issue 16: start-up cost). The layer is on the hot path, so it does
as little as it can per call: one ContextVar set/reset and, with metrics, two clock reads and
one `Metrics.observe`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import grpc

from sidecar.calls import CallInfo, current_call, request_id_from
from sidecar.transport.layers import Behavior, UnaryLayer

if TYPE_CHECKING:
    from sidecar.transport.metrics import Metrics

REQUEST_ID = "x-request-id"


def observing(metrics: Metrics | None) -> UnaryLayer:
    """The outermost layer (transport/layers.py): opens the call's `CallInfo` (request id,
    peer, and the reason handlers record), then counts and times the call."""

    def layer(behavior: Behavior, method: str) -> Behavior:
        async def observed(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            supplied = None
            for key, value in context.invocation_metadata() or ():
                if key == REQUEST_ID:
                    supplied = value if isinstance(value, str) else None
            call = CallInfo(request_id_from(supplied), method, context.peer())
            token = current_call.set(call)
            start = time.perf_counter()
            code = "UNKNOWN"
            try:
                response = await behavior(request, context)
                code = _code_name(context.code(), default="OK")
                return response
            except BaseException:
                code = _code_name(context.code(), default="UNKNOWN")
                raise
            finally:
                if metrics is not None:
                    elapsed = time.perf_counter() - start
                    metrics.observe(method, code, call.reason, elapsed, request, call.outcome)
                current_call.reset(token)

        return observed

    return layer


def _code_name(code: Any, *, default: str) -> str:
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):
        for status in grpc.StatusCode:
            if status.value[0] == code:
                return status.name
    return default
