"""Optional OpenTelemetry tracing: one SERVER span per RPC (config `tracing.enabled`).

Off by default, and then this layer is not installed at all: the hot path is unchanged
and `opentelemetry` is never imported. When on, `opentelemetry-api` is imported here (a
missing package stops start-up with a ConfigError naming `tracing.enabled`); the SDK, its
exporter and sampler are the operator's, set up the standard way (`opentelemetry-instrument`
with `OTEL_*` variables, or a TracerProvider configured before start). Without an SDK the API
is a no-op.

The span is named after the full method (`authsidecar.v1.AuthService/Verify`) and carries
`rpc.system`, `rpc.service`, `rpc.method`, `rpc.grpc.status_code` and, for a refused call, the
ErrorInfo reason (`authsidecar.reason`). Its parent is the caller's W3C `traceparent` (or
whatever the configured propagator reads). Tokens, metadata values and claims are never
recorded, nor exception text.

It is a call layer (transport/layers.py) inside the observing one, which opens the call's
`CallInfo` (where handlers record the reason), and outside the metadata limit, so its
refusals are traced too.
"""

from __future__ import annotations

from typing import Any

import grpc

from sidecar.calls import current_call
from sidecar.errors import ConfigError
from sidecar.transport.layers import Behavior

TRACER_NAME = "authsidecar"
REASON_ATTRIBUTE = "authsidecar.reason"


class TracingLayer:
    """Wraps unary-unary handlers (all of ours but reflection and Health/Watch) in a span."""

    def __init__(self) -> None:
        try:
            from opentelemetry import propagate, trace
        except ImportError:
            raise ConfigError(
                "setting tracing.enabled: the opentelemetry packages are not installed "
                "(install opentelemetry-api/sdk, or set tracing.enabled to false)"
            ) from None
        self._trace = trace
        self._extract = propagate.extract
        # A ProxyTracer when no provider is set yet: it follows the one set later.
        self._tracer = trace.get_tracer(TRACER_NAME)

    def __call__(self, behavior: Behavior, method: str) -> Behavior:
        trace = self._trace
        tracer = self._tracer
        extract = self._extract
        name = method.lstrip("/")
        service, _, rpc_method = name.rpartition("/")
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": rpc_method}
        server_kind = trace.SpanKind.SERVER
        error = trace.StatusCode.ERROR

        async def traced(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            # The propagator reads only its own keys (traceparent, tracestate); binary
            # metadata is skipped. Nothing of the metadata is put on the span.
            carrier = {
                key: value
                for key, value in context.invocation_metadata() or ()
                if isinstance(value, str)
            }
            with tracer.start_as_current_span(
                name,
                context=extract(carrier),
                kind=server_kind,
                attributes=attributes,
                record_exception=False,
                set_status_on_exception=False,
            ) as span:
                code = grpc.StatusCode.UNKNOWN
                try:
                    response = await behavior(request, context)
                    code = _status(context.code(), grpc.StatusCode.OK)
                    return response
                except BaseException:
                    code = _status(context.code(), grpc.StatusCode.UNKNOWN)
                    raise
                finally:
                    span.set_attribute("rpc.grpc.status_code", code.value[0])
                    call = current_call.get()
                    if call is not None and call.reason:
                        span.set_attribute(REASON_ATTRIBUTE, call.reason)
                    if code is not grpc.StatusCode.OK:
                        span.set_status(trace.Status(error, code.name))

        return traced


def _status(code: Any, default: grpc.StatusCode) -> grpc.StatusCode:
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):
        for status in grpc.StatusCode:
            if status.value[0] == code:
                return status
    return default
